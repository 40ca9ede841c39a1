"""Offline builders for tests and demos: tiny tokenizers and tiny random HF models."""

from .photos import PHOTOS, write_photo_folder
from .run import build_tiny_run
from .tiny_models import TINY_FAMILIES, available_families, build_tiny_model
from .tokenizer import build_tokenizer

__all__ = [
    "PHOTOS",
    "TINY_FAMILIES",
    "available_families",
    "build_tiny_model",
    "build_tiny_run",
    "build_tokenizer",
    "write_photo_folder",
]
