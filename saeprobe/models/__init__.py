"""Model adapters: one small class per HF model family, in a registry."""

from .base import EncodedBatch, ModelAdapter, resolve_dtype
from .prompts import PROMPTS, render_prompt
from .registry import (
    ADAPTERS,
    UnknownArchitectureError,
    adapter_class,
    architecture_of,
    load_model,
    register_adapter,
)

__all__ = [
    "ADAPTERS",
    "EncodedBatch",
    "ModelAdapter",
    "PROMPTS",
    "UnknownArchitectureError",
    "adapter_class",
    "architecture_of",
    "load_model",
    "register_adapter",
    "render_prompt",
    "resolve_dtype",
]
