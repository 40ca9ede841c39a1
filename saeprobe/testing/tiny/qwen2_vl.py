"""Tiny random Qwen2-VL checkpoint (offline): model, tokenizer, PIL image processor.

Shared by the Qwen2.5-VL and Qwen3-VL builders: :func:`build_qwen_vl` takes the
config / model / image-processor classes and the chat template of a family.
The processor is saved as its two parts (tokenizer + image processor + the
chat template file), because ``Qwen2VLProcessor`` itself needs torchvision;
:class:`saeprobe.models.qwen2_vl.QwenVLAdapter` reassembles them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import instantiate

#: special tokens of the Qwen2 tokenizer family, in the order of their real ids
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: the chat template of Qwen2-VL-*-Instruct and Qwen2.5-VL-*-Instruct (default system turn)
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

#: tiny language model shared by the Qwen builders (head_dim 16 -> mrope_section sums to 8)
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 512,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
}

#: small pixel budget: a photo becomes 4..16 merged image tokens
MIN_PIXELS = 4 * 28 * 28
MAX_PIXELS = 16 * 28 * 28


def build_tokenizer_for_qwen(chat_template: str, extra_tokens: tuple[str, ...] = ()):
    """Offline byte-level BPE with the Qwen special tokens and ``chat_template``."""
    from ..tokenizer import build_tokenizer

    tok = build_tokenizer(
        [*SPECIAL_TOKENS, *extra_tokens],
        vocab_size=400,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=chat_template,
    )
    return tok


def token_ids(tok) -> dict[str, int]:
    """Config entries (image / video / vision start / end, bos / eos / pad) from ``tok``."""
    ids = {t: tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    return {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }


def build_qwen_vl(
    out_dir: Path,
    *,
    config_cls,
    model_cls,
    vision_config: dict[str, Any],
    chat_template: str,
    image_processor_kwargs: dict[str, Any] | None = None,
    text_config: dict[str, Any] | None = None,
) -> Path:
    """Save a tiny random Qwen-VL family checkpoint into ``out_dir``.

    Parameters
    ----------
    config_cls, model_cls : HF classes (``Qwen2VLConfig``, ``Qwen2VLForConditionalGeneration``)
    vision_config : dict
        Vision tower settings (tiny).
    chat_template : str
        The family's real chat template.
    image_processor_kwargs : dict
        Extra settings of ``Qwen2VLImageProcessorPil`` (patch size, mean / std).
    """
    from transformers import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tok = build_tokenizer_for_qwen(chat_template)
    ids = token_ids(tok)
    text = {**TEXT_CONFIG, **(text_config or {})}
    text.update(
        vocab_size=len(tok),
        bos_token_id=ids["bos_token_id"],
        eos_token_id=ids["eos_token_id"],
        pad_token_id=ids["pad_token_id"],
    )
    config = config_cls(
        text_config=text,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
    )
    model = instantiate(model_cls, config)
    model.save_pretrained(out_dir)

    ip_kwargs = {
        "min_pixels": MIN_PIXELS,
        "max_pixels": MAX_PIXELS,
        "patch_size": vision_config.get("patch_size", 14),
        "temporal_patch_size": vision_config.get("temporal_patch_size", 2),
        "merge_size": vision_config.get("spatial_merge_size", 2),
    }
    ip_kwargs.update(image_processor_kwargs or {})
    Qwen2VLImageProcessorPil(**ip_kwargs).save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    (out_dir / "chat_template.jinja").write_text(chat_template, encoding="utf-8")
    return out_dir


def merger_vision(**overrides: Any) -> dict[str, Any]:
    """The tiny vision tower of Qwen2.5-VL / Qwen3-VL (2 blocks, d = 32, 2x2 patch merger
    into the decoder's width); ``overrides`` set the patch size and the version's extras."""
    return {
        "depth": 2,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": TEXT_CONFIG["hidden_size"],
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
        **overrides,
    }


def build(out_dir: Path) -> Path:
    """Tiny random ``Qwen2VLForConditionalGeneration`` (+ tokenizer, image processor)."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    vision = {
        "depth": 2,
        "embed_dim": 32,
        "hidden_size": TEXT_CONFIG["hidden_size"],
        "num_heads": 2,
        "mlp_ratio": 2,
        "patch_size": 14,
        "spatial_merge_size": 2,
        "temporal_patch_size": 2,
    }
    return build_qwen_vl(
        out_dir,
        config_cls=Qwen2VLConfig,
        model_cls=Qwen2VLForConditionalGeneration,
        vision_config=vision,
        chat_template=QWEN2_VL_CHAT_TEMPLATE,
    )
