"""CLIP (``CLIPModel``): a dual encoder with a text tower and a vision tower.

Dual encoders are the paper's contrastive baselines (CLIP ViT-B/32). They take raw text
(the paper's one-word-summary prompts do NOT apply) or an image, never both: each item
goes through one tower (:meth:`tower_of`), and a batch holds items of a single tower.

Per-token streams
-----------------
text tower
    ``[BOS] tokens... [EOS]`` right-padded to the longest item (CLIP's text encoder is
    causal with absolute positions, so right padding leaves every real token exactly as
    when encoded alone). Labels: ``TEXT`` on the text's tokens, ``TEMPLATE`` on BOS / EOS.
    ``final_norm("text")`` is ``final_layer_norm`` (its output is ``last_hidden_state``);
    ``hidden_states[-1]`` is the raw output of the last encoder layer (CLIP keeps it
    un-normalised, ``tie_last_hidden_states=False``).
vision tower
    ``[CLS] patch_1 ... patch_N`` (after ``pre_layrnorm``), no padding. Labels:
    ``TEMPLATE`` on CLS, ``IMAGE`` on patches. ``input_ids`` holds ``-1`` (no token ids).
    ``final_norm("vision")`` is ``None``: the encoder output is ``last_hidden_state``
    (= ``hidden_states[-1]``); ``post_layernorm`` only normalises the pooled CLS vector.

:meth:`embed` returns the projected embedding as ``get_text_features`` /
``get_image_features`` give it (their ``pooler_output`` in transformers 5.x), NOT
L2-normalised.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .._types import Item, Modality
from .base import EncodedBatch, ModelAdapter
from .registry import architecture_of, register_adapter

logger = logging.getLogger(__name__)

#: ``input_ids`` value at vision-tower positions (patches have no token id)
NO_TOKEN_ID = -1


class DualEncoderAdapter(ModelAdapter):
    """Shared logic of CLIP-style dual encoders (text tower + vision tower).

    Subclasses set :attr:`architectures` and may override :meth:`_encode_text_inputs`,
    :meth:`_vision_layout` and :meth:`final_norm`.
    """

    towers: ClassVar[tuple[str, ...]] = ("text", "vision")
    is_dual_encoder: ClassVar[bool] = True
    #: tokenizer padding of the text tower (``longest`` or ``max_length``)
    text_padding: ClassVar[str] = "longest"
    #: pass no attention mask to the text tower (it attends over the pads, as trained)
    text_attends_pads: ClassVar[bool] = False

    @classmethod
    def load_model(cls, name_or_path: str, *, dtype: torch.dtype | None, **kwargs) -> nn.Module:
        import transformers

        arch = architecture_of(name_or_path)
        if arch not in cls.architectures:
            arch = cls.architectures[0]
        model_cls = getattr(transformers, arch)
        return model_cls.from_pretrained(name_or_path, dtype=dtype, **kwargs)

    # ----- towers --------------------------------------------------------------------
    def tower_of(self, item: Item) -> str:
        if item.image is not None and item.text:
            raise ValueError(
                f"item {item.id!r} has both an image and a text, but {type(self).__name__} is a "
                "dual encoder (one tower per input); split it into an image item and a text item"
            )
        if item.image is not None:
            return "vision"
        if item.text:
            return "text"
        raise ValueError(f"item {item.id!r} has neither text nor image")

    def _check_tower(self, tower: str | None) -> str:
        if tower not in self.towers:
            raise ValueError(
                f"unknown tower {tower!r} for {type(self).__name__}; choose one of {self.towers}"
            )
        return tower

    def tower_module(self, tower: str) -> nn.Module:
        """The HF sub-model of a tower (``model.text_model`` / ``model.vision_model``)."""
        tower = self._check_tower(tower)
        return self.model.text_model if tower == "text" else self.model.vision_model

    def layers(self, tower: str | None = None) -> nn.ModuleList:
        return self.tower_module(tower or "text").encoder.layers

    def final_norm(self, tower: str | None = None) -> nn.Module | None:
        tower = self._check_tower(tower or "text")
        if tower == "text":
            return self.model.text_model.final_layer_norm
        return None

    def d_model_of(self, tower: str | None = None) -> int:
        tower = self._check_tower(tower or "text")
        cfg = self.model.config.text_config if tower == "text" else self.model.config.vision_config
        return int(cfg.hidden_size)

    # ----- inputs --------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_processor(self) -> Any:
        ip = getattr(self.processor, "image_processor", None)
        if ip is None:
            raise ValueError(
                f"{type(self).__name__} processor has no image processor; load the model folder "
                "with its preprocessor_config.json"
            )
        return ip

    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Build a single-tower batch.

        Parameters
        ----------
        items : sequence of Item
            Text-only items (text tower) or image-only items (vision tower).
        tower : {"text", "vision"} | None
            ``None`` infers it from the items (they must all go to the same tower).
        """
        if not items:
            raise ValueError("encode() needs at least one item")
        towers = {self.tower_of(it) for it in items}
        if tower is None:
            if len(towers) != 1:
                raise ValueError(
                    f"{type(self).__name__}.encode got items of both towers {sorted(towers)}; "
                    "encode text items and image items in separate batches (group by tower_of)"
                )
            tower = towers.pop()
        tower = self._check_tower(tower)
        wrong = [it.id for it in items if self.tower_of(it) != tower]
        if wrong:
            raise ValueError(
                f"items {wrong[:5]} do not belong to the {tower!r} tower; group items by "
                "adapter.tower_of(item) before encoding"
            )
        ids = [it.id for it in items]
        if tower == "text":
            return self._encode_text([it.text for it in items], ids)
        return self._encode_vision([it.image for it in items], ids)

    def _text_max_length(self) -> int:
        n = int(self.model.config.text_config.max_position_embeddings)
        tml = getattr(self.tokenizer, "model_max_length", None)
        if isinstance(tml, int) and 0 < tml < n:
            n = tml
        return n

    def _encode_text_inputs(self, texts: list[str]) -> tuple[dict[str, torch.Tensor], Any]:
        """Tokenise; return (model inputs, tokenizer output with attention/special masks)."""
        enc = self.tokenizer(
            texts,
            padding=self.text_padding,
            truncation=True,
            max_length=self._text_max_length(),
            padding_side="right",
            return_attention_mask=True,
            return_special_tokens_mask=True,
            return_tensors="pt",
        )
        if self.text_attends_pads:  # no attention mask to the model
            return {"input_ids": enc["input_ids"]}, enc
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}, enc

    def _encode_text(self, texts: list[str], ids: list[str]) -> EncodedBatch:
        inputs, enc = self._encode_text_inputs(texts)
        mask = enc["attention_mask"].long()
        special = enc["special_tokens_mask"].bool()
        modality = torch.full(mask.shape, int(Modality.TEXT), dtype=torch.int8)
        modality[special | (mask == 0)] = int(Modality.TEMPLATE)
        return EncodedBatch(
            inputs=inputs,
            input_ids=enc["input_ids"].long(),
            attention_mask=mask,
            modality=modality,
            item_ids=ids,
            tower="text",
        )

    def _image_inputs(self, images: list[Any]) -> dict[str, torch.Tensor]:
        out = self.image_processor([_rgb(im) for im in images], return_tensors="pt")
        return {"pixel_values": out["pixel_values"]}

    def _vision_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        """Attention mask [B, T] of the vision stream and the number of leading CLS tokens."""
        pv = inputs["pixel_values"]
        p = int(self.model.config.vision_config.patch_size)
        n = (pv.shape[-2] // p) * (pv.shape[-1] // p)
        return torch.ones(pv.shape[0], n + 1, dtype=torch.long), 1

    def _encode_vision(self, images: list[Any], ids: list[str]) -> EncodedBatch:
        inputs = self._image_inputs(images)
        mask, n_cls = self._vision_layout(inputs)
        modality = torch.full(mask.shape, int(Modality.IMAGE), dtype=torch.int8)
        modality[:, :n_cls] = int(Modality.TEMPLATE)
        modality[mask == 0] = int(Modality.TEMPLATE)
        return EncodedBatch(
            inputs=inputs,
            input_ids=torch.full(mask.shape, NO_TOKEN_ID, dtype=torch.long),
            attention_mask=mask,
            modality=modality,
            item_ids=ids,
            tower="vision",
        )

    # ----- running -------------------------------------------------------------------
    def _cast(self, inputs: dict[str, Any]) -> dict[str, Any]:
        dt = self.dtype
        return {
            k: (v.to(dt) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in inputs.items()
        }

    def forward(self, batch: EncodedBatch, **kwargs) -> Any:
        """Run the batch's tower (``model.text_model`` / ``model.vision_model``)."""
        tower = self._check_tower(batch.tower)
        return self.tower_module(tower)(**self._cast(batch.inputs), **kwargs)

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        """Projected embedding [B, D] (``get_text_features`` / ``get_image_features``
        ``pooler_output``), not normalised."""
        tower = self._check_tower(batch.tower)
        inputs = self._cast(batch.inputs)
        if tower == "text":
            out = self.model.get_text_features(**inputs)
        else:
            out = self.model.get_image_features(**inputs)
        return out if torch.is_tensor(out) else out.pooler_output


@register_adapter
class CLIPAdapter(DualEncoderAdapter):
    """Adapter for ``CLIPModel`` (see the module docstring for the token streams)."""

    architectures = ("CLIPModel",)


def _rgb(image: Any) -> Any:
    """PIL images to RGB (grayscale / RGBA inputs); other inputs unchanged."""
    convert = getattr(image, "convert", None)
    if convert is not None and getattr(image, "mode", "RGB") != "RGB":
        return convert("RGB")
    return image
