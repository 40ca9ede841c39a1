"""Idefics3 and SmolVLM (``Idefics3ForConditionalGeneration``, ``SmolVLMForConditionalGeneration``).

Prompt: the family's chat template, one user turn, no generation prompt; image items put
the image before the text (``User:<image>{prompt}<end_of_utterance>\\n``).

Image splitting: the image processor resizes an image and cuts it into ``rows x cols``
crops plus a global view; the single ``<image>`` of the template is expanded as the
processors do::

    <fake_token_around_image><row_1_col_1><image>*N ... \\n          (one line per row)
    \\n<fake_token_around_image><global-img><image>*N<fake_token_around_image>

(``N = image_seq_len``; an unsplit image keeps only the global block). Only the ``<image>``
positions are ``IMAGE``; ``<fake_token_around_image>``, ``<global-img>``, ``<row_i_col_j>`` and
the newlines are ``TEMPLATE``. The expansion is done here (not by the processor) because
``SmolVLMProcessor`` needs ``num2words`` and a torchvision video processor; the tokenizer and
the PIL image processor are loaded separately (:class:`Idefics3Parts`). The tokens match
``Idefics3Processor`` exactly (tested).

Batches are right-padded: the Llama text model uses absolute positions from 0, so right
padding gives each item the activations it has alone. Items without an image contribute no
``pixel_values`` (the model scatters image features over ``<image>`` positions in order).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._types import Item
from ._labels import label_tokens, locate_text
from .base import EncodedBatch, ModelAdapter
from .prompts import render_prompt
from .registry import architecture_of, register_adapter

logger = logging.getLogger(__name__)

#: chat templates used when a checkpoint ships none (same format as the released models)
_FALLBACK_TEMPLATES = {
    "idefics3": (
        "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
        "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
        "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
        "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}"
        "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
    ),
}
_FALLBACK_TEMPLATES["smolvlm"] = "<|im_start|>" + _FALLBACK_TEMPLATES["idefics3"][17:]


@dataclass
class Idefics3Parts:
    """What the adapter uses instead of the HF processor.

    Attributes
    ----------
    tokenizer : PreTrainedTokenizerBase
        Fast tokenizer (offsets are needed for labels).
    image_processor : Any
        ``Idefics3ImageProcessor(Pil)`` / ``SmolVLMImageProcessor(Pil)``.
    chat_template : str
        Jinja chat template.
    """

    tokenizer: Any
    image_processor: Any
    chat_template: str


def _read_chat_template(name_or_path: str, **kwargs) -> str | None:
    """A processor-level chat template file (``chat_template.jinja`` / ``.json``), if any."""
    from transformers.utils import cached_file

    for fname in ("chat_template.jinja", "chat_template.json"):
        try:
            path = cached_file(
                name_or_path,
                fname,
                _raise_exceptions_for_missing_entries=False,
                _raise_exceptions_for_connection_errors=False,
                **kwargs,
            )
        except OSError:
            path = None
        if path:
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            return json.loads(text)["chat_template"] if fname.endswith(".json") else text
    return None


@register_adapter
class Idefics3Adapter(ModelAdapter):
    """Adapter for Idefics3 and SmolVLM (see the module docstring)."""

    decoder_path = "model.text_model"

    architectures = ("Idefics3ForConditionalGeneration", "SmolVLMForConditionalGeneration")

    def __init__(self, model: nn.Module, processor: Any, name_or_path: str | None = None):
        super().__init__(model, processor, name_or_path)
        cfg = model.config
        vc = cfg.vision_config
        self.image_seq_len = int((vc.image_size // vc.patch_size) ** 2 // cfg.scale_factor**2)
        self.image_token_id = int(cfg.image_token_id)
        tok = self.tokenizer
        self.image_token = getattr(tok, "image_token", None) or "<image>"
        self.fake_image_token = (
            getattr(tok, "fake_image_token", None) or "<fake_token_around_image>"
        )
        self.global_image_token = getattr(tok, "global_image_token", None) or "<global-img>"
        self.check_token_id(self.image_token, self.image_token_id)

    # ----- loading -------------------------------------------------------------------
    @classmethod
    def load_model(cls, name_or_path: str, *, dtype: torch.dtype | None, **kwargs) -> nn.Module:
        import transformers

        arch = architecture_of(name_or_path)
        if arch not in cls.architectures:
            arch = cls.architectures[0]
        return getattr(transformers, arch).from_pretrained(name_or_path, dtype=dtype, **kwargs)

    @classmethod
    def load_processor(cls, name_or_path: str, **kwargs) -> Idefics3Parts:
        from transformers import AutoImageProcessor, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(name_or_path, **kwargs)
        ip = AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
        # the processor-level template (what Idefics3Processor / SmolVLMProcessor use) first
        template = _read_chat_template(name_or_path) or getattr(tok, "chat_template", None)
        if not template:
            family = (
                "smolvlm" if architecture_of(name_or_path).startswith("SmolVLM") else "idefics3"
            )
            logger.warning(
                "%s ships no chat template; using the built-in %s one", name_or_path, family
            )
            template = _FALLBACK_TEMPLATES[family]
        if isinstance(template, dict):  # named templates
            template = template.get("default") or next(iter(template.values()))
        return Idefics3Parts(tokenizer=tok, image_processor=ip, chat_template=template)

    # ----- inputs --------------------------------------------------------------------
    def image_prompt(self, rows: int, cols: int) -> str:
        """The expansion of one ``<image>`` for an image split into ``rows x cols`` crops."""
        tokens = self.image_token * self.image_seq_len
        glob = f"{self.fake_image_token}{self.global_image_token}{tokens}{self.fake_image_token}"
        if rows == 0 and cols == 0:
            return glob
        out = ""
        for r in range(rows):
            for c in range(cols):
                out += f"{self.fake_image_token}<row_{r + 1}_col_{c + 1}>{tokens}"
            out += "\n"
        return out + "\n" + glob

    def _render(self, body: str, has_image: bool, rows: int, cols: int) -> str:
        content = ([{"type": "image"}] if has_image else []) + [{"type": "text", "text": body}]
        text = self.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}],
            chat_template=self.chat_template,
            tokenize=False,
            add_generation_prompt=False,
        )
        if has_image:
            if self.image_token not in text:
                raise ValueError(
                    f"the chat template did not emit {self.image_token!r} for an image item; "
                    "use the checkpoint's own chat template"
                )
            text = text.replace(self.image_token, self.image_prompt(rows, cols), 1)
        return text

    def encode(self, items: Sequence[Item], tower: str | None = None) -> EncodedBatch:
        """Chat-template prompts, image splitting and token expansion, right padding.

        Returns
        -------
        EncodedBatch
            ``inputs`` holds ``input_ids``, ``attention_mask`` and, when some item has an
            image, ``pixel_values [n_image_items, max_crops, 3, H, W]`` and
            ``pixel_attention_mask``.
        """
        if not items:
            raise ValueError("encode() needs at least one item")
        tok = self.tokenizer
        with_image = [it for it in items if it.image is not None]
        inputs: dict[str, Any] = {}
        rows = cols = None
        if with_image:
            out = self.image_processor(
                [[_rgb(it.image)] for it in with_image],
                return_row_col_info=True,
                return_tensors="pt",
            )
            inputs["pixel_values"] = out["pixel_values"]
            if "pixel_attention_mask" in out:
                inputs["pixel_attention_mask"] = out["pixel_attention_mask"].bool()
            rows = [r[0] for r in out["rows"]]
            cols = [c[0] for c in out["cols"]]
        ids_list, labels = [], []
        k = 0
        for it in items:
            prompt_text, span = render_prompt(it)
            has_image = it.image is not None
            r, c = (rows[k], cols[k]) if has_image else (0, 0)
            k += int(has_image)
            loc = locate_text(
                lambda s, h=has_image, r=r, c=c: self._render(s, h, r, c), prompt_text, span
            )
            enc = tok(loc.prompt, add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            n_img = sum(1 for i in ids if i == self.image_token_id)
            expected = 0 if not has_image else self.image_seq_len * (r * c + 1)
            if n_img != expected:
                raise ValueError(
                    f"item {it.id!r}: {n_img} image tokens after tokenisation, expected {expected}; "
                    "the tokenizer must keep '<image>' as a single special token"
                )
            ids_list.append(torch.tensor(ids, dtype=torch.long))
            labels.append(
                label_tokens(enc["offset_mapping"], loc.text_span, ids, {self.image_token_id})
            )
        return EncodedBatch.from_token_lists(items, ids_list, labels, tok.pad_token_id, inputs)


def _rgb(image: Any) -> Any:
    convert = getattr(image, "convert", None)
    if convert is not None and getattr(image, "mode", "RGB") != "RGB":
        return convert("RGB")
    return image
