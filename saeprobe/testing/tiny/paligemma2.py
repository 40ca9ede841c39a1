"""Tiny random PaliGemma2 checkpoint: the PaliGemma builder with a Gemma2 decoder
(logit soft-capping, alternating sliding-window / full attention layers)."""

from __future__ import annotations

from pathlib import Path

from .paligemma import build_paligemma

#: Gemma2-specific settings of the tiny decoder
GEMMA2_OVERRIDES = {
    "sliding_window": 4096,
    "query_pre_attn_scalar": 12,
    "final_logit_softcapping": 30.0,
    "attn_logit_softcapping": 50.0,
}


def build(out_dir: Path) -> Path:
    """Save a tiny random PaliGemma2 and its processor to ``out_dir``."""
    return build_paligemma(out_dir, "gemma2", GEMMA2_OVERRIDES)
