"""Tiny random Qwen2.5-VL checkpoint (offline), see :mod:`saeprobe.testing.tiny.qwen2_vl`."""

from __future__ import annotations

from pathlib import Path

from .qwen2_vl import QWEN2_VL_CHAT_TEMPLATE, build_qwen_vl, merger_vision


def build(out_dir: Path) -> Path:
    """Tiny random ``Qwen2_5_VLForConditionalGeneration`` (+ tokenizer, image processor).

    The vision tower has window attention (window 56 px) and one full-attention block,
    as the real model does; Qwen2.5-VL uses Qwen2-VL's chat template.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    vision = merger_vision(patch_size=14, window_size=56, fullatt_block_indexes=[1])
    return build_qwen_vl(
        out_dir,
        config_cls=Qwen2_5_VLConfig,
        model_cls=Qwen2_5_VLForConditionalGeneration,
        vision_config=vision,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
