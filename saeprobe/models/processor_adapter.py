"""Processor-driven adapter base shared by LLaVA, LLaVA-NeXT, PaliGemma and Chameleon.

1. the paper prompt (:func:`~saeprobe.models.prompts.render_prompt`) is wrapped in the
   family's layout (e.g. the processor's chat template, one user turn holding the image
   then the prompt text, no generation prompt);
2. the real HF processor expands the image placeholder, runs the image processor and
   tokenises with right padding and character offsets;
3. the item text's character span is moved through the placeholder expansions the
   processor reports (``return_text_replacement_offsets``) and checked against the
   expanded string, then :func:`~saeprobe.models._labels.label_tokens` labels every
   token (IMAGE by placeholder id, TEXT by offset overlap, TEMPLATE elsewhere).

Right padding keeps each real token at the position it has when encoded alone (HF
builds ``position_ids`` with ``arange``), so padded and single-item activations match.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._types import Item, Modality
from ._labels import label_tokens, system_turn_span
from .base import EncodedBatch, ModelAdapter
from .prompts import render_prompt

logger = logging.getLogger(__name__)

__all__ = ["ProcessorMLLMAdapter", "expand_string", "shift_span"]

#: processor outputs that are bookkeeping, not model inputs
_NON_MODEL_KEYS = ("offset_mapping", "text_replacement_offsets", "labels")


def shift_span(span: tuple[int, int], replacements: Sequence[dict[str, Any]]) -> tuple[int, int]:
    """Move a character span of the processor's input string into the expanded string.

    Parameters
    ----------
    span : (start, end)
        Span in the string before placeholder expansion.
    replacements : list of dict
        One row of the processor's ``text_replacement_offsets`` (keys ``span``,
        ``replacement``).

    Returns
    -------
    (start, end) in the expanded string.
    """
    shift = 0
    for rep in replacements:
        s, e = rep["span"]
        if e <= span[0]:
            shift += len(rep["replacement"]) - (e - s)
        elif s < span[1]:
            raise ValueError("an image placeholder overlaps the item text; remove it from the text")
    return span[0] + shift, span[1] + shift


def expand_string(text: str, replacements: Sequence[dict[str, Any]]) -> str:
    """Apply the processor's reported placeholder replacements to ``text``."""
    parts, last = [], 0
    for rep in sorted(replacements, key=lambda r: r["span"][0]):
        s, e = rep["span"]
        parts.append(text[last:s])
        parts.append(rep["replacement"])
        last = e
    parts.append(text[last:])
    return "".join(parts)


class ProcessorMLLMAdapter(ModelAdapter):
    """Shared base of decoder MLLMs whose HF processor expands image placeholders.

    Subclasses set :attr:`model_class` (name of the ``transformers`` class to load) and
    implement :meth:`layout` (the string handed to the processor for one item) and, if
    the processor edits that string before expanding placeholders, :meth:`pre_expand`.
    """

    decoder_path = "model.language_model"

    #: name of the transformers model class (loaded lazily)
    model_class: ClassVar[str] = ""
    #: extra keyword arguments for the processor call
    processor_kwargs: ClassVar[dict[str, Any]] = {}

    # ----- loading -------------------------------------------------------------------
    @classmethod
    def load_model(cls, name_or_path: str, *, dtype: torch.dtype | None, **kwargs) -> nn.Module:
        import transformers

        model_cls = getattr(transformers, cls.model_class)
        return model_cls.from_pretrained(name_or_path, dtype=dtype, **kwargs)

    # ----- ids -----------------------------------------------------------------------
    @property
    def image_token(self) -> str:
        """The image placeholder string of the processor."""
        return self.processor.image_token

    @property
    def image_token_ids(self) -> tuple[int, ...]:
        """Token ids labelled IMAGE."""
        return (int(self.processor.image_token_id),)

    # ----- prompt layout -------------------------------------------------------------
    def prepare_image(self, item: Item) -> Any:
        """The image given to the processor for ``item`` (``None`` for none)."""
        return item.image

    def layout(self, item: Item, prompt_text: str, span: tuple[int, int] | None, has_image: bool):
        """The string the processor receives and the item text's span in it.

        Returns
        -------
        TextLocation-like ``(prompt, text_span)``
        """
        raise NotImplementedError

    def pre_expand(self, text: str, span: tuple[int, int] | None):
        """Edits the processor makes to its input before placeholder expansion."""
        return text, span

    # ----- encoding ------------------------------------------------------------------
    def run_processor(self, images: list[Any] | None, texts: list[str]) -> Any:
        """Call the HF processor: right padding, offsets and placeholder expansions."""
        return self.processor(
            images=images,
            text=texts,
            padding=True,
            padding_side="right",
            return_tensors="pt",
            return_offsets_mapping=True,
            return_text_replacement_offsets=True,
            **self.processor_kwargs,
        )

    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Build a right-padded batch with modality labels.

        Returns
        -------
        EncodedBatch
            ``inputs`` holds what :meth:`forward` passes to the base model
            (``input_ids``, ``attention_mask``, ``pixel_values``, ...).
        """
        if not items:
            raise ValueError("encode() needs at least one item")
        texts, spans, images = [], [], []
        for item in items:
            prompt_text, span = render_prompt(item)
            if item.text and self.image_token in item.text:
                raise ValueError(
                    f"item {item.id!r}: its text contains the image placeholder "
                    f"{self.image_token!r}; remove it from the text"
                )
            image = self.prepare_image(item)
            text, text_span = self.layout(item, prompt_text, span, image is not None)
            texts.append(text)
            spans.append(text_span)
            if image is not None:
                images.append(image)
        enc = self.run_processor(images or None, texts)
        replacements = enc.get("text_replacement_offsets") or []
        if len(replacements) != len(items):  # no placeholders at all in this batch
            replacements = [[] for _ in items]
        offsets = enc["offset_mapping"]
        input_ids = enc["input_ids"]
        attention_mask = enc["attention_mask"].long()
        modality = torch.full(input_ids.shape, int(Modality.TEMPLATE), dtype=torch.int8)
        for b, item in enumerate(items):
            text, span = self.pre_expand(texts[b], spans[b])
            expanded = expand_string(text, replacements[b])
            expanded_span = None
            if span is not None:
                expanded_span = shift_span(span, replacements[b])
                got = expanded[expanded_span[0] : expanded_span[1]]
                if got != (item.text or ""):
                    raise RuntimeError(
                        f"item {item.id!r}: located text {got!r} differs from the item text; "
                        f"the {type(self.processor).__name__} layout is not the one "
                        f"{type(self).__name__} expects"
                    )
            keep = attention_mask[b].bool()
            # a default system turn of the chat template (e.g. SmolLM2's) is SYSTEM
            system = system_turn_span(expanded, expanded_span[0] if expanded_span else None)
            modality[b, keep] = label_tokens(
                offsets[b][keep],
                expanded_span,
                input_ids[b][keep],
                self.image_token_ids,
                system_end=system[1] if system else None,
            )
        inputs = {k: v for k, v in enc.items() if k not in _NON_MODEL_KEYS}
        inputs["attention_mask"] = attention_mask
        return EncodedBatch(
            inputs=inputs,
            input_ids=input_ids,
            attention_mask=attention_mask,
            modality=modality,
            item_ids=[it.id for it in items],
        )
