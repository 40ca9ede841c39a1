"""Tiny random LLaVA 1.5 checkpoint (offline): CLIP tower, Llama decoder, LlavaProcessor.

:func:`build_tokenizer_for_llava` and :data:`VISION_CONFIG` / :data:`TEXT_CONFIG` are
shared with the LLaVA-NeXT builder (:mod:`saeprobe.testing.tiny.llava_next`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import instantiate, save_all, special_ids

#: special tokens of the Llama tokenizer family plus LLaVA's image placeholder
SPECIAL_TOKENS = ["<unk>", "<s>", "</s>", "<image>", "<pad>"]

#: chat template of llava-1.5-*-hf (Vicuna style): "USER: <image>\n{text} ASSISTANT:"
LLAVA_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] != 'system' %}{{ message['role'].upper() + ': ' }}{% endif %}"
    "{% if message['content'] is string %}{{ message['content'] + ' ' }}"
    "{% else %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] + ' ' }}{% endfor %}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}"
)

#: tiny CLIP vision tower: 28 px crops, 7 px patches -> 16 patch tokens (+ CLS)
VISION_CONFIG: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 28,
    "patch_size": 7,
    "projection_dim": 32,
}

#: tiny Llama / Mistral decoder
TEXT_CONFIG: dict[str, Any] = {
    "hidden_size": 48,
    "intermediate_size": 96,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 1024,
}


def build_tokenizer_for_llava(chat_template: str):
    """Offline byte-level BPE with the Llama special tokens; prepends ``<s>`` like Llama."""
    from tokenizers.processors import TemplateProcessing

    from ..tokenizer import build_tokenizer

    tok = build_tokenizer(
        SPECIAL_TOKENS,
        vocab_size=400,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        chat_template=chat_template,
    )
    bos = tok.convert_tokens_to_ids("<s>")
    tok._tokenizer.post_processor = TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return tok


def build(out_dir: Path) -> Path:
    """Save a tiny random ``LlavaForConditionalGeneration`` and its processor to ``out_dir``."""
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    tok = build_tokenizer_for_llava(LLAVA_CHAT_TEMPLATE)
    side = VISION_CONFIG["image_size"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=VISION_CONFIG["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_CHAT_TEMPLATE,
    )
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG),
        text_config=LlamaConfig(
            **TEXT_CONFIG,
            vocab_size=len(tok),
            **special_ids(tok),
        ),
        image_token_id=processor.image_token_id,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = instantiate(LlavaForConditionalGeneration, config)
    return save_all(out_dir, model, processor)
