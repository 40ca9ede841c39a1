"""Gemma 3 vision-language models (``Gemma3ForConditionalGeneration``).

Prompt: Gemma 3's chat template, one user turn, no generation prompt, image before text
(``<bos><start_of_turn>user\\n<start_of_image>{prompt}<end_of_turn>\\n``). Gemma's template
trims the user text, so the paper prompt's trailing space is dropped, as the model sees it.

The template's ``<start_of_image>`` is expanded as ``Gemma3Processor`` does::

    \\n\\n<start_of_image><image_soft_token>*mm_tokens_per_image<end_of_image>\\n\\n

Only the ``<image_soft_token>`` positions are ``IMAGE`` (``config.image_token_id``);
``<start_of_image>``, ``<end_of_image>`` and the newlines are ``TEMPLATE``. ``token_type_ids``
(1 on image soft tokens) are passed to the model so image tokens attend to each other
bidirectionally, as in Gemma 3. Pan-and-scan is off (the processor default). The batch is
right-padded, so every item gets the activations it has alone; items without an image add
no ``pixel_values``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .._types import Item
from ._labels import label_tokens, locate_text
from .base import EncodedBatch, ModelAdapter
from .prompts import render_prompt
from .registry import register_adapter

logger = logging.getLogger(__name__)


@register_adapter
class Gemma3Adapter(ModelAdapter):
    """Adapter for ``Gemma3ForConditionalGeneration`` (see the module docstring)."""

    decoder_path = "model.language_model"

    architectures = ("Gemma3ForConditionalGeneration",)

    def __init__(self, model: nn.Module, processor: Any, name_or_path: str | None = None):
        super().__init__(model, processor, name_or_path)
        cfg = model.config
        self.image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
        self.mm_tokens_per_image = int(cfg.mm_tokens_per_image)
        tok = self.tokenizer
        self.boi_token = getattr(tok, "boi_token", None) or "<start_of_image>"
        self.eoi_token = getattr(tok, "eoi_token", None) or "<end_of_image>"
        self.image_token = getattr(tok, "image_token", None) or "<image_soft_token>"
        self.check_token_id(self.image_token, self.image_token_id)
        self._trims: bool | None = None

    @classmethod
    def load_model(cls, name_or_path: str, *, dtype: torch.dtype | None, **kwargs) -> nn.Module:
        from transformers import Gemma3ForConditionalGeneration

        return Gemma3ForConditionalGeneration.from_pretrained(name_or_path, dtype=dtype, **kwargs)

    # ----- inputs --------------------------------------------------------------------
    @property
    def image_sequence(self) -> str:
        """The text one ``<start_of_image>`` of the template becomes."""
        soft = self.image_token * self.mm_tokens_per_image
        return f"\n\n{self.boi_token}{soft}{self.eoi_token}\n\n"

    def _template(self, body: str, has_image: bool) -> str:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": body}]
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=False,
        )

    def _render(self, body: str, has_image: bool) -> str:
        text = self._template(body, has_image)
        if has_image:
            if self.boi_token not in text:
                raise ValueError(
                    f"the chat template did not emit {self.boi_token!r} for an image item; "
                    "use the checkpoint's own chat template"
                )
            text = text.replace(self.boi_token, self.image_sequence, 1)
        return text

    @property
    def template_trims_text(self) -> bool:
        """Whether the chat template strips the user text (Gemma's does: ``| trim``)."""
        if self._trims is None:
            self._trims = " \u2063 " not in self._template(" \u2063 ", False)
        return self._trims

    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Chat-template prompts with expanded image tokens, right padding.

        Returns
        -------
        EncodedBatch
            ``inputs``: ``input_ids``, ``attention_mask``, ``token_type_ids`` and, when some
            item has an image, ``pixel_values [n_image_items, 3, H, W]``.
        """
        if not items:
            raise ValueError("encode() needs at least one item")
        tok = self.tokenizer
        inputs: dict[str, Any] = {}
        with_image = [it for it in items if it.image is not None]
        if with_image:
            out = self.image_processor([_rgb(it.image) for it in with_image], return_tensors="pt")
            crops = out.get("num_crops")
            if crops is not None and any(int(c) for c in torch.as_tensor(crops).reshape(-1)):
                raise ValueError(
                    "pan-and-scan crops are not supported; load the processor with do_pan_and_scan=False"
                )
            inputs["pixel_values"] = out["pixel_values"]
        ids_list, labels = [], []
        for it in items:
            prompt_text, span = render_prompt(it)
            if self.template_trims_text:
                prompt_text, span = _strip(prompt_text, span)
            has_image = it.image is not None
            loc = locate_text(lambda s, h=has_image: self._render(s, h), prompt_text, span)
            enc = tok(loc.prompt, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            n_img = sum(1 for i in ids if i == self.image_token_id)
            expected = self.mm_tokens_per_image if has_image else 0
            if n_img != expected:
                raise ValueError(
                    f"item {it.id!r}: {n_img} image tokens after tokenisation, expected {expected}; "
                    f"the tokenizer must keep {self.image_token!r} as a single special token"
                )
            ids_list.append(torch.tensor(ids, dtype=torch.long))
            labels.append(
                label_tokens(enc["offset_mapping"], loc.text_span, ids, {self.image_token_id})
            )
        batch = EncodedBatch.from_token_lists(items, ids_list, labels, tok.pad_token_id, inputs)
        image = (batch.input_ids == self.image_token_id) & (batch.attention_mask == 1)
        batch.inputs["token_type_ids"] = image.long()
        return batch


def _strip(prompt: str, span: tuple[int, int] | None) -> tuple[str, tuple[int, int] | None]:
    """``prompt.strip()`` and the item-text span moved / clipped accordingly."""
    lead = len(prompt) - len(prompt.lstrip())
    out = prompt.strip()
    if span is None:
        return out, None
    s, e = max(span[0] - lead, 0), min(span[1] - lead, len(out))
    return out, ((s, e) if e > s else None)


def _rgb(image: Any) -> Any:
    convert = getattr(image, "convert", None)
    if convert is not None and getattr(image, "mode", "RGB") != "RGB":
        return convert("RGB")
    return image
