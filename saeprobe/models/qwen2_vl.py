"""Qwen2-VL adapter, and the base class shared by all Qwen-VL families.

Prompts follow the paper: the processor's chat template with one user turn
(image first, then the filled prompt text), no generation prompt. Qwen2-VL and
Qwen2.5-VL templates add the default system turn ``"You are a helpful
assistant."``; its tokens are labelled ``SYSTEM``.

``Qwen2VLProcessor`` needs torchvision (for its video processor), so the adapter
loads the parts itself: the fast tokenizer, the PIL image processor
(``Qwen2VLImageProcessorPil``) and the processor's chat template. It expands each
``<|image_pad|>`` into ``grid_thw.prod() // merge_size**2`` copies, exactly as the
HF processor does, and builds ``mm_token_type_ids`` (1 on image tokens) for M-RoPE.
Batches are right-padded: every real token keeps the positions it has when
encoded alone, so padded and unpadded activations agree.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._types import Item
from ._labels import label_tokens, locate_text, pad_sequences
from .base import EncodedBatch, ModelAdapter
from .prompts import render_prompt
from .registry import register_adapter

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<|image_pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"


@dataclass
class QwenVLProcessor:
    """Torchvision-free stand-in for ``Qwen2VLProcessor`` / ``Qwen3VLProcessor``.

    Attributes
    ----------
    tokenizer : PreTrainedTokenizerFast
        Must be a fast tokenizer (offsets are used for modality labels).
    image_processor : Qwen2VLImageProcessorPil
        PIL/numpy image processor (patching, resizing to a multiple of
        ``patch_size * merge_size``).
    chat_template : str
        The processor's chat template (Jinja).
    image_token : str
        The image placeholder token.
    """

    tokenizer: Any
    image_processor: Any
    chat_template: str
    image_token: str = IMAGE_TOKEN

    @property
    def image_token_id(self) -> int:
        return int(self.tokenizer.convert_tokens_to_ids(self.image_token))

    @property
    def merge_size(self) -> int:
        return int(self.image_processor.merge_size)

    def num_image_tokens(self, image_grid_thw: torch.Tensor) -> int:
        """Placeholder count of one image, ``t * h * w // merge_size**2``."""
        return int(torch.as_tensor(image_grid_thw).prod()) // self.merge_size**2

    def render(self, text: str, with_image: bool) -> str:
        """One user turn (image first, then ``text``), no generation prompt."""
        content: list[dict[str, Any]] = [{"type": "image"}] if with_image else []
        content.append({"type": "text", "text": text})
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=False,
        )


def _read_processor_chat_template(name_or_path: str, **kwargs) -> str | None:
    """The chat template saved with the processor (``chat_template.jinja`` / ``.json``)."""
    from transformers.utils import cached_file

    opts = {
        "_raise_exceptions_for_missing_entries": False,
        "_raise_exceptions_for_connection_errors": False,
    }
    for fname in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(name_or_path, fname, **opts, **kwargs)
        except (OSError, ValueError):
            path = None
        if not path:
            continue
        with open(path, encoding="utf-8") as fh:
            raw = fh.read()
        return json.loads(raw)["chat_template"] if fname.endswith(".json") else raw
    return None


def _to_rgb(image: Any):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    try:
        import numpy as np

        return Image.fromarray(np.asarray(image)).convert("RGB")
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot use an image of type {type(image).__name__}; pass a PIL image or an "
            "HxWx3 uint8 array"
        ) from exc


def system_turn_end(prompt: str) -> int | None:
    """Character offset where a leading ``<|im_start|>system ... <|im_end|>\\n`` turn ends."""
    if not prompt.startswith(IM_START + "system"):
        return None
    end = prompt.find(IM_END)
    if end < 0:
        return None
    end += len(IM_END)
    if prompt[end : end + 1] == "\n":
        end += 1
    return end


class QwenVLAdapter(ModelAdapter):
    """Common code of the Qwen2-VL, Qwen2.5-VL and Qwen3-VL adapters.

    Subclasses set :attr:`architectures` (the first is the default model class).
    Structure: ``model.model.language_model.layers`` are the decoder layers,
    ``model.model.language_model.norm`` the final norm, and :meth:`forward` runs
    ``model.model`` (vision tower + language model, no LM head).
    """

    decoder_path = "model.language_model"

    #: padding side of encoded batches
    padding_side: ClassVar[str] = "right"

    # ----- loading -------------------------------------------------------------------
    @classmethod
    def load_model(cls, name_or_path: str, *, dtype: torch.dtype | None, **kwargs) -> nn.Module:
        import transformers

        arch = cls.architectures[0]
        try:
            config = transformers.AutoConfig.from_pretrained(name_or_path)
            archs = getattr(config, "architectures", None) or []
            if archs and archs[0] in cls.architectures:
                arch = archs[0]
        except (OSError, ValueError):
            pass
        model_cls = getattr(transformers, arch)
        logger.debug("loading %s as %s", name_or_path, arch)
        return model_cls.from_pretrained(name_or_path, dtype=dtype, **kwargs)

    @classmethod
    def load_processor(cls, name_or_path: str, **kwargs) -> QwenVLProcessor:
        from transformers import AutoTokenizer, Qwen2VLImageProcessorPil

        tokenizer = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(
                f"{name_or_path!r} has no fast tokenizer (tokenizer.json); saeprobe needs one for "
                "token offsets. Install `tokenizers` or convert the tokenizer."
            )
        image_processor = Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **kwargs)
        template = _read_processor_chat_template(name_or_path, **kwargs) or tokenizer.chat_template
        if not template:
            raise ValueError(
                f"{name_or_path!r} has no chat template (chat_template.jinja/json or in "
                "tokenizer_config.json); add the model's template file to the folder."
            )
        return QwenVLProcessor(tokenizer, image_processor, template)

    # ----- inputs --------------------------------------------------------------------
    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Chat-template prompts, image patches, ``mm_token_type_ids``, modality labels.

        Returns
        -------
        EncodedBatch
            ``inputs`` holds ``input_ids``, ``attention_mask`` and ``mm_token_type_ids``
            [B, T], plus ``pixel_values`` [n_patches, C*T*P*P] and ``image_grid_thw``
            [n_images, 3] when any item has an image. ``extra["prompts"]`` holds the
            rendered prompt strings (image placeholders expanded).
        """
        if tower is not None:
            raise ValueError(f"{type(self).__name__} has a single tower; pass tower=None")
        if not items:
            raise ValueError("encode() needs at least one item")
        proc: QwenVLProcessor = self.processor
        image_id = proc.image_token_id
        ids_rows, mod_rows, prompts = [], [], []
        pixel_values, grids = [], []
        for item in items:
            prompt_text, span = render_prompt(item)
            with_image = item.image is not None
            n_img = 0
            if with_image:
                feats = proc.image_processor(images=[_to_rgb(item.image)], return_tensors="pt")
                pixel_values.append(feats["pixel_values"])
                grids.append(feats["image_grid_thw"])
                n_img = proc.num_image_tokens(feats["image_grid_thw"][0])

            def render(s: str, with_image=with_image, n_img=n_img) -> str:
                out = proc.render(s, with_image)
                if with_image:
                    if out.count(proc.image_token) != 1:
                        raise ValueError(
                            "the chat template did not emit exactly one image placeholder "
                            f"{proc.image_token!r} for an image item"
                        )
                    out = out.replace(proc.image_token, proc.image_token * n_img)
                return out

            loc = locate_text(render, prompt_text, span)
            enc = proc.tokenizer(loc.prompt, add_special_tokens=False, return_offsets_mapping=True)
            ids = torch.tensor(enc["input_ids"], dtype=torch.long)
            n_found = int((ids == image_id).sum())
            if n_found != n_img:
                raise ValueError(
                    f"item {item.id!r}: {n_found} image tokens in the prompt but the image needs "
                    f"{n_img}; remove {proc.image_token!r} from the item text"
                )
            mod = label_tokens(
                enc["offset_mapping"], loc.text_span, ids, {image_id}, system_turn_end(loc.prompt)
            )
            ids_rows.append(ids)
            mod_rows.append(mod)
            prompts.append(loc.prompt)

        pad_id = proc.tokenizer.pad_token_id
        if pad_id is None:
            pad_id = proc.tokenizer.eos_token_id or 0
        input_ids, attention_mask = pad_sequences(ids_rows, pad_id, side=self.padding_side)
        modality, _ = pad_sequences(mod_rows, 0, side=self.padding_side, dtype=torch.int8)
        mm_token_type_ids = ((input_ids == image_id) & attention_mask.bool()).to(torch.int32)
        inputs: dict[str, Any] = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "mm_token_type_ids": mm_token_type_ids,
        }
        if pixel_values:
            inputs["pixel_values"] = torch.cat(pixel_values, dim=0)
            inputs["image_grid_thw"] = torch.cat(grids, dim=0)
        return EncodedBatch(
            inputs=inputs,
            input_ids=input_ids,
            attention_mask=attention_mask,
            modality=modality,
            item_ids=[it.id for it in items],
            extra={"prompts": prompts},
        )


@register_adapter
class Qwen2VLAdapter(QwenVLAdapter):
    """Qwen2-VL (e.g. ``Qwen/Qwen2-VL-7B-Instruct``, d_model 3584)."""

    architectures = ("Qwen2VLForConditionalGeneration",)
