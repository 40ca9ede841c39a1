"""Offline builders for tests and demos: tiny tokenizers and tiny random HF models."""

from .tokenizer import build_tokenizer

__all__ = ["build_tokenizer"]
