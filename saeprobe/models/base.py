"""Model adapter base class: how saeprobe sees one family of HF models.

An adapter wraps a loaded Hugging Face model plus its processor and knows
(1) how to load it, (2) how to turn :class:`~saeprobe.Item` objects into a
padded batch with per-token modality labels, (3) which modules form the
residual stream (decoder layers and the final norm) and (4) how to run the
base model without its LM head.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from .. import dtypes
from .._types import Item
from ._labels import pad_sequences

logger = logging.getLogger(__name__)


@dataclass
class EncodedBatch:
    """A padded model batch plus the labels saeprobe needs.

    Attributes
    ----------
    inputs : dict[str, Tensor]
        Keyword arguments for :meth:`ModelAdapter.forward` (``input_ids``,
        ``attention_mask``, ``pixel_values``, ...).
    input_ids : LongTensor [B, T]
        Token ids; image positions hold the image placeholder id.
    attention_mask : LongTensor [B, T]
        1 for real tokens, 0 for padding.
    modality : Int8Tensor [B, T]
        :class:`~saeprobe.Modality` per token (undefined where padded).
    item_ids : list[str]
        Item id per row.
    tower : str | None
        For dual encoders, ``"text"`` or ``"vision"``; ``None`` for MLLMs.
    """

    inputs: dict[str, Any]
    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    modality: torch.Tensor
    item_ids: list[str]
    tower: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to(self, device: torch.device | str) -> EncodedBatch:
        moved = {k: (v.to(device) if torch.is_tensor(v) else v) for k, v in self.inputs.items()}
        return EncodedBatch(
            inputs=moved,
            input_ids=self.input_ids.to(device),
            attention_mask=self.attention_mask.to(device),
            modality=self.modality.to(device),
            item_ids=list(self.item_ids),
            tower=self.tower,
            extra=dict(self.extra),
        )

    @property
    def n_tokens(self) -> int:
        return int(self.attention_mask.sum())

    @classmethod
    def from_token_lists(
        cls,
        items: Sequence[Item],
        ids_list: Sequence[torch.Tensor],
        labels: Sequence[torch.Tensor],
        pad_id: int | None,
        inputs: dict[str, Any],
        **extra: Any,
    ) -> EncodedBatch:
        """Right-pad per-item token ids [T_i] and modality labels [T_i] into a batch;
        ``input_ids`` / ``attention_mask`` are added to ``inputs``."""
        ids, mask = pad_sequences(ids_list, pad_id if pad_id is not None else 0, side="right")
        modality, _ = pad_sequences(labels, 0, side="right", dtype=torch.int8)
        inputs = {**inputs, "input_ids": ids, "attention_mask": mask}
        return cls(inputs, ids, mask, modality, [it.id for it in items], **extra)


class ModelAdapter:
    """Base class of all model adapters (one subclass per model family).

    Subclasses set :attr:`architectures` (HF ``config.architectures`` names they
    serve) and implement :meth:`load_model`, :meth:`encode`, :meth:`layers`,
    :meth:`final_norm` and :meth:`forward`.

    Attributes
    ----------
    model : nn.Module
        The loaded HF model (usually ``...ForConditionalGeneration``).
    processor : Any
        Its processor / tokenizer.
    """

    architectures: ClassVar[tuple[str, ...]] = ()
    #: towers of a dual encoder ("text", "vision"); ``(None,)`` for MLLMs
    towers: ClassVar[tuple[str | None, ...]] = (None,)
    #: True for CLIP-style models whose embedding is their own projection
    is_dual_encoder: ClassVar[bool] = False

    def __init__(self, model: nn.Module, processor: Any, name_or_path: str | None = None):
        self.model = model
        self.processor = processor
        self.name_or_path = name_or_path or getattr(model.config, "_name_or_path", None)

    # ----- loading -------------------------------------------------------------------
    @classmethod
    def load_model(cls, name_or_path: str, *, dtype: torch.dtype | None, **kwargs) -> nn.Module:
        """Load the HF model (hub id or local folder)."""
        raise NotImplementedError

    @classmethod
    def load_processor(cls, name_or_path: str, **kwargs) -> Any:
        """Load the processor / tokenizer (hub id or local folder)."""
        from transformers import AutoProcessor

        return AutoProcessor.from_pretrained(name_or_path, **kwargs)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        **kwargs,
    ) -> ModelAdapter:
        """Load model and processor and wrap them; the model is put in eval mode."""
        if isinstance(dtype, str):  # "auto": bf16 only where the device runs it natively
            dtype = dtypes.resolve(dtype, device, what="model")
        model = cls.load_model(name_or_path, dtype=dtype, **kwargs)
        processor = cls.load_processor(name_or_path)
        model.eval()
        if device is not None:
            model.to(device)
        return cls(model, processor, name_or_path=name_or_path)

    # ----- inputs --------------------------------------------------------------------
    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Build a padded batch (prompts, image processing, modality labels)."""
        raise NotImplementedError

    def tower_of(self, item: Item) -> str | None:
        """Which tower an item goes through (``None`` for MLLMs)."""
        return None

    # ----- structure -----------------------------------------------------------------
    #: attribute path from the HF model to its decoder stack (a module with ``layers`` and
    #: ``norm``), e.g. ``"model.language_model"``; families without one override
    #: :meth:`layers` / :meth:`final_norm`
    decoder_path: ClassVar[str | None] = None

    def decoder(self) -> nn.Module:
        """The decoder stack at :attr:`decoder_path`."""
        if self.decoder_path is None:
            raise NotImplementedError(f"{type(self).__name__} sets no decoder_path")
        module = self.model
        for part in self.decoder_path.split("."):
            module = getattr(module, part)
        return module

    def layers(self, tower: str | None = None) -> nn.ModuleList:
        """The decoder (or encoder) layers whose outputs form the residual stream."""
        return self.decoder().layers

    def final_norm(self, tower: str | None = None) -> nn.Module | None:
        """The module whose output is HF's ``hidden_states[-1]`` (None if it is the raw
        output of the last layer)."""
        return self.decoder().norm

    @property
    def n_layers(self) -> int:
        return len(self.layers(self.towers[0]))

    @property
    def d_model(self) -> int:
        return self.d_model_of(self.towers[0])

    def d_model_of(self, tower: str | None = None) -> int:
        """Width of the residual stream of a tower (default: the text config's hidden size)."""
        return int(self.model.config.get_text_config().hidden_size)

    @property
    def tokenizer(self) -> Any:
        """The tokenizer (the processor's, or the processor itself when it is one)."""
        return getattr(self.processor, "tokenizer", self.processor)

    @property
    def image_processor(self) -> Any:
        """The processor's image processor (None for text-only models)."""
        return getattr(self.processor, "image_processor", None)

    def check_token_id(self, token: str, expected: int, field: str = "image_token_id") -> None:
        """The tokenizer must map ``token`` to the config's ``field`` (a mismatched tokenizer
        would label no image tokens)."""
        tid = self.tokenizer.convert_tokens_to_ids(token)
        if tid != expected:
            raise ValueError(
                f"tokenizer id of {token!r} is {tid} but config.{field} is {expected}; load the "
                "tokenizer saved with this model"
            )

    @property
    def chat_template(self) -> str | None:
        """The processor's chat template, else the tokenizer's."""
        return getattr(self.processor, "chat_template", None) or getattr(
            self.tokenizer, "chat_template", None
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # ----- running -------------------------------------------------------------------
    def forward(self, batch: EncodedBatch, **kwargs) -> Any:
        """Run the base model ``model.model`` (no LM head) on a batch, floating inputs cast to
        the model dtype; ``kwargs`` go to HF forward (e.g. ``output_hidden_states=True``).
        Hooks placed by :mod:`saeprobe.hooks` observe (and may stop) this call."""
        dtype = self.dtype
        inputs = {
            k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v)
            for k, v in batch.inputs.items()
        }
        return self.model.model(**inputs, use_cache=False, **kwargs)

    def embed(self, batch: EncodedBatch) -> torch.Tensor:
        """Dual encoders only: the model's own projected embedding [B, D]."""
        raise NotImplementedError(f"{type(self).__name__} has no native embedding; use pooling")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name_or_path!r})"


def resolve_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    """Parse a dtype name (``"bf16"``, ``"float32"``, ...; :mod:`saeprobe.dtypes`);
    ``"auto"`` picks bf16 where the CPU / GPU runs it natively, else fp32."""
    if isinstance(name, str) and name.strip().lower() == "auto":
        return dtypes.resolve("auto")
    return dtypes.to_torch(name)
