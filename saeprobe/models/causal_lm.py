"""Text-only decoder LLM adapter (Llama, Qwen2/3, Mistral, Gemma2/3, Phi-3, SmolLM2).

A baseline for the paper's question "is it the MLLM or the LLM?": the same text
prompts and the same hook points as the MLLM adapters, on a plain causal LM.

Prompts: the paper's text prompt (:func:`~saeprobe.models.prompts.render_prompt`)
wrapped in the tokenizer's chat template as one user turn, no generation prompt,
tokenized without extra special tokens (as ``apply_chat_template`` does). A
tokenizer without a chat template gets the raw prompt with its own special tokens
(e.g. a leading BOS). A default system turn added by the template (ChatML as in
SmolLM2 / Qwen2, Llama 3 headers, Phi-3 ``<|system|>``) is labelled ``SYSTEM``.

Structure: ``model.model.layers`` are the decoder layers, ``model.model.norm`` the
final norm; :meth:`CausalLMAdapter.forward` runs ``model.model`` (no LM head).

GGUF checkpoints load through transformers (de-quantized to ``dtype``)::

    adapter = CausalLMAdapter.from_pretrained(folder, gguf_file="model.Q4_1.gguf")
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from .. import dtypes
from .._types import Item, Modality
from ._labels import (
    SYSTEM_TURN_MARKERS,  # noqa: F401 - re-exported
    TextLocation,
    label_tokens,
    locate_text,
    pad_sequences,
    system_turn_span,
)
from .base import EncodedBatch, ModelAdapter
from .prompts import render_prompt
from .registry import register_adapter

logger = logging.getLogger(__name__)


@register_adapter
class CausalLMAdapter(ModelAdapter):
    """Decoder-only text LLMs (``...ForCausalLM`` with ``model.model.layers``/``.norm``).

    Attributes
    ----------
    model : PreTrainedModel
        The ``...ForCausalLM`` model (with its LM head, for generation).
    processor : PreTrainedTokenizerFast
        Its fast tokenizer (offsets are needed for modality labels).
    """

    decoder_path = "model"

    architectures = (
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "Qwen3ForCausalLM",
        "MistralForCausalLM",
        "Gemma2ForCausalLM",
        "Gemma3ForCausalLM",
        "Phi3ForCausalLM",
    )
    #: padding side of encoded batches (right: positions match unpadded runs)
    padding_side: ClassVar[str] = "right"

    def __init__(self, model: nn.Module, processor: Any, name_or_path: str | None = None):
        super().__init__(model, processor, name_or_path)
        base = getattr(model, "model", None)
        if base is None or not hasattr(base, "layers") or not hasattr(base, "norm"):
            raise TypeError(
                f"{type(model).__name__} does not have model.model.layers and model.model.norm; "
                "CausalLMAdapter serves decoder-only LLMs such as LlamaForCausalLM"
            )

    # ----- loading -------------------------------------------------------------------
    @classmethod
    def load_model(
        cls, name_or_path: str, *, dtype: torch.dtype | None, gguf_file: str | None = None, **kwargs
    ) -> nn.Module:
        """Load the ``...ForCausalLM`` model; ``gguf_file`` names a GGUF file in the folder."""
        from transformers import AutoModelForCausalLM

        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        return AutoModelForCausalLM.from_pretrained(name_or_path, dtype=dtype, **kwargs)

    @classmethod
    def load_processor(cls, name_or_path: str, *, gguf_file: str | None = None, **kwargs) -> Any:
        """Load the fast tokenizer (from ``gguf_file`` when given)."""
        from transformers import AutoTokenizer

        if gguf_file is not None:
            kwargs["gguf_file"] = gguf_file
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{name_or_path!r} has no fast tokenizer (tokenizer.json); saeprobe needs one for "
                "token offsets. Install `tokenizers` or convert the tokenizer."
            )
        return tokenizer

    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str,
        *,
        dtype: torch.dtype | str | None = None,
        device: torch.device | str | None = None,
        gguf_file: str | None = None,
        **kwargs,
    ) -> CausalLMAdapter:
        """Load model and tokenizer (both from ``gguf_file`` when given); eval mode."""
        if isinstance(dtype, str):  # "auto": bf16 only where the device runs it natively
            dtype = dtypes.resolve(dtype, device, what="model")
        model = cls.load_model(name_or_path, dtype=dtype, gguf_file=gguf_file, **kwargs)
        tokenizer = cls.load_processor(name_or_path, gguf_file=gguf_file)
        model.eval()
        if device is not None:
            model.to(device)
        return cls(model, tokenizer, name_or_path=name_or_path)

    # ----- inputs --------------------------------------------------------------------
    @property
    def tokenizer(self) -> Any:
        return self.processor

    @property
    def has_chat_template(self) -> bool:
        return bool(getattr(self.processor, "chat_template", None))

    def render(self, text: str) -> str:
        """The chat template around one user turn ``text`` (no generation prompt), or
        ``text`` itself when the tokenizer has no chat template."""
        if not self.has_chat_template:
            return text
        return self.processor.apply_chat_template(
            [{"role": "user", "content": text}], tokenize=False, add_generation_prompt=False
        )

    def _locate(self, prompt_text: str, span: tuple[int, int] | None) -> TextLocation:
        """The rendered prompt exactly as ``apply_chat_template`` makes it, and the item
        text's span in it.

        Templates may edit the user content (Llama 3 trims it: the paper prompt's trailing
        space goes); the template's own rendering is kept when the item text sits at the
        sentinel's place in it, otherwise the sentinel substitution is used.
        """
        loc = locate_text(self.render, prompt_text, span)
        actual = self.render(prompt_text)
        if actual == loc.prompt or span is None:
            return loc if actual == loc.prompt else TextLocation(actual, None)
        start, end = loc.text_span
        if actual[:start] == loc.prompt[:start] and actual[start:end] == loc.prompt[start:end]:
            return TextLocation(actual, loc.text_span)
        return loc

    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Prompted, tokenized, right-padded text items with modality labels.

        Returns
        -------
        EncodedBatch
            ``inputs`` holds ``input_ids`` and ``attention_mask`` [B, T];
            ``extra["prompts"]`` the rendered prompt strings.
        """
        if tower is not None:
            raise ValueError(f"{type(self).__name__} has a single tower; pass tower=None")
        if not items:
            raise ValueError("encode() needs at least one item")
        tok = self.processor
        templated = self.has_chat_template
        ids_rows, mod_rows, prompts = [], [], []
        for item in items:
            if item.image is not None:
                raise ValueError(
                    f"item {item.id!r} has an image but {type(self.model).__name__} is a text-only "
                    "LLM; drop the image (Item(id, text=...)) or use a multimodal model"
                )
            prompt_text, span = render_prompt(item)
            loc = self._locate(prompt_text, span) if templated else TextLocation(prompt_text, span)
            enc = tok(loc.prompt, add_special_tokens=not templated, return_offsets_mapping=True)
            ids = torch.tensor(enc["input_ids"], dtype=torch.long)
            before = loc.text_span[0] if loc.text_span is not None else None
            system = system_turn_span(loc.prompt, before) if templated else None
            system_end = system[1] if system is not None else None
            mod = label_tokens(enc["offset_mapping"], loc.text_span, ids, (), system_end)
            if system is not None and system[0] > 0:
                # tokens before the system turn (a BOS) are template, not system prompt
                ends = torch.as_tensor(enc["offset_mapping"], dtype=torch.long).reshape(-1, 2)[:, 1]
                mod[ends <= system[0]] = int(Modality.TEMPLATE)
            ids_rows.append(ids)
            mod_rows.append(mod)
            prompts.append(loc.prompt)
        pad_id = tok.pad_token_id
        if pad_id is None:
            pad_id = tok.eos_token_id if tok.eos_token_id is not None else 0
        input_ids, attention_mask = pad_sequences(ids_rows, pad_id, side=self.padding_side)
        modality, _ = pad_sequences(mod_rows, 0, side=self.padding_side, dtype=torch.int8)
        return EncodedBatch(
            inputs={"input_ids": input_ids, "attention_mask": attention_mask},
            input_ids=input_ids,
            attention_mask=attention_mask,
            modality=modality,
            item_ids=[it.id for it in items],
            extra={"prompts": prompts},
        )
