"""SigLIP (``SiglipModel``) and SigLIP2 NaFlex (``Siglip2Model``) dual encoders.

The paper's SigLIP2 baseline (``google/siglip2-base-patch16-512``) is a fixed-resolution
SigLIP2 checkpoint whose config says ``SiglipModel``: it loads with this adapter like any
SigLIP. NaFlex SigLIP2 checkpoints (``Siglip2Model``, e.g. ``google/siglip2-base-patch16-naflex``)
also work: their image processor returns variable-length patch sequences
(``pixel_values [B, max_num_patches, 3*p*p]``, ``pixel_attention_mask``, ``spatial_shapes``);
the vision stream's ``attention_mask`` is ``pixel_attention_mask``.

Text tower
    Raw text (no prompt), tokenised as SigLIP was trained: padded to ``max_length``
    (``tokenizer.model_max_length``, 64 for SigLIP / SigLIP2) and run WITHOUT an attention
    mask, so pad tokens attend and are attended (as in big_vision / open_clip; the native
    embedding is read at the last position). Activations therefore do not depend on the
    batch. ``EncodedBatch.attention_mask`` marks the real tokens (text + EOS): captures and
    pools skip the pad positions. Labels: ``TEXT`` on the text's tokens, ``TEMPLATE`` on
    special tokens (EOS / BOS). SigLIP2 was trained on lower-cased text: lower-case item
    texts yourself if you want to match its training distribution.
    ``final_norm("text")`` = ``final_layer_norm`` (output = ``last_hidden_state``);
    ``hidden_states[-1]`` is the raw last encoder layer output.
Vision tower
    Patches only (no CLS), all ``IMAGE``; ``input_ids`` holds ``-1``.
    ``final_norm("vision")`` = ``post_layernorm``, which SigLIP applies to every patch
    (output = ``last_hidden_state``); ``hidden_states[-1]`` is the raw last layer output.

:meth:`embed` returns ``get_text_features`` / ``get_image_features`` ``pooler_output``
(the text head on the last token / the attention-pooling head), not normalised.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .clip import DualEncoderAdapter, _rgb
from .registry import register_adapter


@register_adapter
class SiglipAdapter(DualEncoderAdapter):
    """Adapter for ``SiglipModel`` and ``Siglip2Model`` (see the module docstring)."""

    architectures = ("SiglipModel", "Siglip2Model")
    # SigLIP was trained on max-length padded texts and attends over the pads
    text_padding = "max_length"
    text_attends_pads = True

    @property
    def is_naflex(self) -> bool:
        """True for SigLIP2 NaFlex models (variable-length patch sequences)."""
        return type(self.model).__name__.startswith("Siglip2")

    def final_norm(self, tower: str | None = None) -> nn.Module | None:
        tower = self._check_tower(tower or "text")
        if tower == "text":
            return self.model.text_model.final_layer_norm
        return self.model.vision_model.post_layernorm

    def _image_inputs(self, images: list[Any]) -> dict[str, torch.Tensor]:
        out = self.image_processor([_rgb(im) for im in images], return_tensors="pt")
        keys = ("pixel_values", "pixel_attention_mask", "spatial_shapes")
        return {k: out[k] for k in keys if k in out}

    def _vision_layout(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
        if "pixel_attention_mask" in inputs:
            return inputs["pixel_attention_mask"].long(), 0
        pv = inputs["pixel_values"]
        p = int(self.model.config.vision_config.patch_size)
        n = (pv.shape[-2] // p) * (pv.shape[-1] // p)
        return torch.ones(pv.shape[0], n, dtype=torch.long), 0
