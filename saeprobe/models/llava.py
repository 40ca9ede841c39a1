"""LLaVA 1.5 and LLaVA-NeXT adapters (CLIP vision tower + Llama/Mistral decoder).

Both use :class:`~saeprobe.models.processor_adapter.ProcessorMLLMAdapter` with the
processor's chat template (one user turn: the image, then the prompt text; no generation
prompt). LLaVA 1.5 expands the image to one token per patch; LLaVA-NeXT uses anyres
tiles, so the count depends on the image size. These families have no default system
turn, so no SYSTEM labels.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from .._types import Item
from ._labels import locate_text
from .processor_adapter import ProcessorMLLMAdapter
from .registry import register_adapter

logger = logging.getLogger(__name__)

__all__ = ["LlavaAdapter", "LlavaNextAdapter"]


class _LlavaFamilyAdapter(ProcessorMLLMAdapter):
    """Shared by LLaVA 1.5 and LLaVA-NeXT: chat-template layout and processor checks."""

    def __init__(self, model: nn.Module, processor: Any, name_or_path: str | None = None):
        super().__init__(model, processor, name_or_path=name_or_path)
        self._check_processor()

    def _check_processor(self) -> None:
        """Fill processor fields that older checkpoints leave unset from the model config.

        The placeholder count is ``patches + num_additional_image_tokens`` (minus one
        for the ``default`` strategy, which drops CLS): a CLIP tower has one CLS token,
        so ``num_additional_image_tokens`` must be 1 there or the counts do not match.
        """
        proc, cfg = self.processor, self.model.config
        if getattr(proc, "patch_size", None) is None:
            proc.patch_size = cfg.vision_config.patch_size
        if getattr(proc, "vision_feature_select_strategy", None) is None:
            proc.vision_feature_select_strategy = cfg.vision_feature_select_strategy
        is_clip = cfg.vision_config.model_type == "clip_vision_model"
        if is_clip and getattr(proc, "num_additional_image_tokens", 0) == 0:
            logger.warning(
                "%s: the processor counts no CLS token for a CLIP vision tower; "
                "setting num_additional_image_tokens=1",
                self.name_or_path,
            )
            proc.num_additional_image_tokens = 1

    def layout(self, item: Item, prompt_text: str, span: tuple[int, int] | None, has_image: bool):
        """One user turn of the processor's chat template (image first), no generation prompt."""

        def render(text: str) -> str:
            content = [{"type": "image"}] if has_image else []
            content.append({"type": "text", "text": text})
            conversation = [{"role": "user", "content": content}]
            return self.processor.apply_chat_template(
                conversation, tokenize=False, add_generation_prompt=False
            )

        return locate_text(render, prompt_text, span)


@register_adapter
class LlavaAdapter(_LlavaFamilyAdapter):
    """LLaVA 1.5 (``LlavaForConditionalGeneration``).

    Prompt: the processor's chat template with one user turn (image, then the paper
    prompt), no generation prompt, e.g. ``"USER: <image>\\n{prompt} "``. Each image
    becomes ``(crop // patch)**2`` placeholder tokens (CLS dropped, ``default``
    feature strategy; the processor needs ``num_additional_image_tokens=1``).
    """

    architectures = ("LlavaForConditionalGeneration",)
    model_class = "LlavaForConditionalGeneration"


@register_adapter
class LlavaNextAdapter(_LlavaFamilyAdapter):
    """LLaVA-NeXT (``LlavaNextForConditionalGeneration``).

    Prompt: as :class:`LlavaAdapter` (the processor's chat template, one user turn, no
    generation prompt). Images are split into anyres tiles; the number of image tokens
    (base tile + unpadded high-resolution grid + one newline per row) depends on each
    image's size and is computed by the real ``LlavaNextProcessor``. ``pixel_values``
    are ``[n_images, n_tiles_max, 3, H, W]`` with ``image_sizes`` ``[n_images, 2]``.
    """

    architectures = ("LlavaNextForConditionalGeneration",)
    model_class = "LlavaNextForConditionalGeneration"
