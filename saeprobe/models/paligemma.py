"""PaliGemma / PaliGemma2 adapter (SigLIP tower + Gemma / Gemma2 decoder).

One class serves both: PaliGemma2 is ``PaliGemmaForConditionalGeneration`` with a
Gemma2 text config. Prompts follow the paper: ``"<image>" + prompt`` with no chat
template; the real ``PaliGemmaProcessor`` turns that into
``<image> * image_seq_length + <bos> + prompt + "\\n"`` (its prefix layout) and returns
``token_type_ids`` (all 0 = prefix, attended bidirectionally by the model). Text-only
items get a blank 112x112 image, as in the paper, so every sequence starts with image
tokens. Right padding keeps real tokens at their single-item positions.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any, ClassVar

from .._types import Item
from ._labels import TextLocation
from .processor_adapter import ProcessorMLLMAdapter
from .registry import register_adapter

logger = logging.getLogger(__name__)

__all__ = ["PaliGemmaAdapter"]


@register_adapter
class PaliGemmaAdapter(ProcessorMLLMAdapter):
    """PaliGemma and PaliGemma2 (``PaliGemmaForConditionalGeneration``).

    Attributes
    ----------
    blank_image_size : (int, int)
        Size of the blank image given to text-only items (the paper's 112x112).
    blank_image_color : (int, int, int)
        Its RGB fill (black).
    """

    architectures = ("PaliGemmaForConditionalGeneration",)
    model_class = "PaliGemmaForConditionalGeneration"
    blank_image_size: ClassVar[tuple[int, int]] = (112, 112)
    blank_image_color: ClassVar[tuple[int, int, int]] = (0, 0, 0)
    #: text-only items carry (blank) image tokens too
    text_items_get_image: ClassVar[bool] = True

    def prepare_image(self, item: Item) -> Any:
        if item.image is not None:
            return item.image
        from PIL import Image

        return Image.new("RGB", self.blank_image_size, self.blank_image_color)

    def run_processor(self, images: list[Any] | None, texts: list[str]) -> Any:
        # PaliGemmaProcessor builds training ``labels`` with np.array(tensor), which warns
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"transformers\.")
            return super().run_processor(images, texts)

    def layout(self, item: Item, prompt_text: str, span: tuple[int, int] | None, has_image: bool):
        tag = self.image_token
        shifted = None if span is None else (span[0] + len(tag), span[1] + len(tag))
        return TextLocation(tag + prompt_text, shifted)

    def pre_expand(self, text: str, span: tuple[int, int] | None):
        """Mirror ``PaliGemmaProcessor.prepare_inputs_layout``: ``<bos>`` after the last
        image placeholder and a trailing newline."""
        bos = self.processor.tokenizer.bos_token
        at = text.rfind(self.image_token) + len(self.image_token)
        out = text[:at] + bos + text[at:] + "\n"
        if span is not None and span[0] >= at:
            span = (span[0] + len(bos), span[1] + len(bos))
        return out, span
