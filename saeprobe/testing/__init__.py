"""Offline builders for tests and demos: tiny tokenizers and tiny random HF models."""

from .tiny_models import TINY_FAMILIES, available_families, build_tiny_model
from .tokenizer import build_tokenizer

__all__ = ["TINY_FAMILIES", "available_families", "build_tiny_model", "build_tokenizer"]
