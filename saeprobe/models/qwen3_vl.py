"""Qwen3-VL adapter (e.g. ``Qwen/Qwen3-VL-8B-Instruct``, d_model 4096), dense and MoE.

Prompts, processor parts and padding as in :mod:`saeprobe.models.qwen2_vl`. The
Qwen3-VL chat template has no default system turn, so no token is labelled
``SYSTEM`` unless the template adds one. Image patches are 16 px (the PIL image
processor reads that from ``preprocessor_config.json``).

DeepStack: the language model adds visual features from early vision layers to
the image positions *after* decoder layers ``0..k-1``. HF records
``hidden_states[i + 1]`` as the decoder layer's own output (before that addition),
and so does a forward hook on ``layers()[i]``; the addition is visible in the
input of layer ``i + 1``.
"""

from __future__ import annotations

from .qwen2_vl import QwenVLAdapter
from .registry import register_adapter


@register_adapter
class Qwen3VLAdapter(QwenVLAdapter):
    """Qwen3-VL (dense) and Qwen3-VL-MoE: same module layout under ``model.model``."""

    architectures = (
        "Qwen3VLForConditionalGeneration",
        "Qwen3VLMoeForConditionalGeneration",
    )
