"""Tiny random ``SmolVLMForConditionalGeneration`` (same geometry as the tiny Idefics3).

Saved as tokenizer (with SmolVLM's ``<|im_start|>User:...`` chat template) + PIL image
processor: ``SmolVLMProcessor`` itself needs ``num2words`` and a torchvision video processor.
"""

from __future__ import annotations

from pathlib import Path

from .idefics3 import build_variant


def build(out_dir: Path) -> Path:
    """Save a tiny SmolVLM checkpoint into ``out_dir``."""
    return build_variant(out_dir, "smolvlm")
