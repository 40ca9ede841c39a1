"""Qwen2.5-VL adapter (e.g. ``Qwen/Qwen2.5-VL-7B-Instruct``).

Same prompts, processor parts, padding and structure as Qwen2-VL (see
:mod:`saeprobe.models.qwen2_vl`): the chat template has the default system turn
(labelled ``SYSTEM``); the vision tower differs (window attention), which the
adapter does not touch.
"""

from __future__ import annotations

from .qwen2_vl import QwenVLAdapter
from .registry import register_adapter


@register_adapter
class Qwen2_5_VLAdapter(QwenVLAdapter):
    """Qwen2.5-VL: ``model.model.language_model`` decoder layers and final norm."""

    architectures = ("Qwen2_5_VLForConditionalGeneration",)
