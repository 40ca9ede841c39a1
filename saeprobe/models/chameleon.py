"""Chameleon adapter (early fusion: a VQ-VAE turns each image into discrete tokens).

Prompts follow the paper: ``"<image>" + prompt`` (just the prompt for text-only items),
no chat template; images are first resized to :attr:`ChameleonAdapter.image_resize`
(224x224 by default, the paper's setting; ``None`` keeps the original size) and then
handled by the real ``ChameleonProcessor``, which expands ``<image>`` into
``<racm3:break> + <image> * image_seq_length + <eoss>`` and, in its default chat mode,
appends its ``sep`` token. The model swaps VQ codes in at the ``<image>`` positions;
those positions are labelled IMAGE, the begin / end-of-image markers TEMPLATE.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar

from torch import nn

from .._types import Item
from ._labels import TextLocation
from .processor_adapter import ProcessorMLLMAdapter
from .registry import register_adapter

logger = logging.getLogger(__name__)

__all__ = ["ChameleonAdapter"]


@register_adapter
class ChameleonAdapter(ProcessorMLLMAdapter):
    """Chameleon (``ChameleonForConditionalGeneration``).

    Parameters
    ----------
    image_resize : (int, int) | None
        ``(width, height)`` every image is resized to before the processor; default
        :attr:`image_resize` (224x224). Also accepted by :meth:`from_pretrained`.
    """

    decoder_path = "model"

    architectures = ("ChameleonForConditionalGeneration",)
    model_class = "ChameleonForConditionalGeneration"
    #: the paper resizes images to 224x224 before the processor
    image_resize: ClassVar[tuple[int, int] | None] = (224, 224)

    def __init__(
        self,
        model: nn.Module,
        processor: Any,
        name_or_path: str | None = None,
        image_resize: tuple[int, int] | None | str = "default",
    ):
        super().__init__(model, processor, name_or_path=name_or_path)
        if image_resize != "default":
            if image_resize is not None:
                w, h = (int(v) for v in image_resize)
                if w <= 0 or h <= 0:
                    raise ValueError(
                        f"image_resize must be positive (width, height), got {image_resize}"
                    )
                image_resize = (w, h)
            self.image_resize = image_resize

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, dtype=None, device=None, **kwargs):
        """As :meth:`ModelAdapter.from_pretrained`, plus an optional ``image_resize``."""
        resize = kwargs.pop("image_resize", "default")
        adapter = super().from_pretrained(name_or_path, dtype=dtype, device=device, **kwargs)
        if resize != "default":
            adapter = cls(
                adapter.model, adapter.processor, adapter.name_or_path, image_resize=resize
            )
        return adapter

    def prepare_image(self, item: Item) -> Any:
        image = item.image
        if image is None or self.image_resize is None:
            return image
        from PIL import Image

        if not isinstance(image, Image.Image):
            image = Image.fromarray(image)
        if image.size != tuple(self.image_resize):
            image = image.resize(tuple(self.image_resize), Image.Resampling.BICUBIC)
        return image

    def layout(self, item: Item, prompt_text: str, span: tuple[int, int] | None, has_image: bool):
        tag = self.image_token if has_image else ""
        shifted = None if span is None else (span[0] + len(tag), span[1] + len(tag))
        return TextLocation(tag + prompt_text, shifted)
