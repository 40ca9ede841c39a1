"""Tiny random LLaVA 1.5 checkpoint (offline): CLIP tower, Llama decoder, LlavaProcessor.

:func:`build_tokenizer_for_llava` and :data:`VISION_CONFIG` / :data:`TEXT_CONFIG` are
shared with the LLaVA-NeXT builder (:mod:`saeprobe.testing.tiny.llava_next`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import decoder, instantiate, prepend_bos, save_all, special_ids, tower

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
VISION_CONFIG: dict[str, Any] = tower(32, image_size=28, patch_size=7, projection_dim=32)

#: tiny Llama / Mistral decoder
TEXT_CONFIG: dict[str, Any] = decoder(max_position_embeddings=1024)


def build_tokenizer_for_llava(chat_template: str):
    """Offline byte-level BPE with the Llama special tokens; prepends ``<s>`` like Llama."""
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
    return prepend_bos(tok, "<s>")


def build_llava_family(
    out_dir: Path,
    prefix: str,
    text_config: Any,
    image_processor: Any,
    chat_template: str,
    **config_kw: Any,
) -> Path:
    """Save a tiny ``<prefix>ForConditionalGeneration`` (``Llava`` / ``LlavaNext``) with its
    ``<prefix>Processor``: the CLIP tower of :data:`VISION_CONFIG`, ``text_config``'s decoder."""
    import transformers
    from transformers import CLIPVisionConfig

    tok = build_tokenizer_for_llava(chat_template)
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=VISION_CONFIG["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    config = getattr(transformers, f"{prefix}Config")(
        vision_config=CLIPVisionConfig(**VISION_CONFIG),
        text_config=text_config(**TEXT_CONFIG, vocab_size=len(tok), **special_ids(tok)),
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        **{k: processor.image_token_id if v is None else v for k, v in config_kw.items()},
    )
    model = instantiate(getattr(transformers, f"{prefix}ForConditionalGeneration"), config)
    return save_all(Path(out_dir), model, processor)


def build(out_dir: Path) -> Path:
    """Save a tiny random ``LlavaForConditionalGeneration`` and its processor to ``out_dir``."""
    from transformers import LlamaConfig
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    side = VISION_CONFIG["image_size"]
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side}, crop_size={"height": side, "width": side}
    )
    # image_token_id=None: filled in with the processor's image token id
    return build_llava_family(
        out_dir, "Llava", LlamaConfig, image_processor, LLAVA_CHAT_TEMPLATE, image_token_id=None
    )
