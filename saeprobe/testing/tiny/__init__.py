"""Tiny random model builders, one module per family."""
