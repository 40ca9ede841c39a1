"""Tiny random LLaVA-NeXT checkpoint (offline): CLIP tower, Mistral decoder, anyres tiles.

The image grid pinpoints are the real ones scaled down to 28 px tiles, so two photos of
different aspect ratios get different numbers of image tokens.
"""

from __future__ import annotations

from pathlib import Path

from .common import instantiate, save_all, special_ids
from .llava import TEXT_CONFIG, VISION_CONFIG, build_tokenizer_for_llava

#: chat template of llava-v1.6-mistral-7b-hf: "[INST] <image>\n{text} [/INST]"
LLAVA_NEXT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{{ '<<SYS>>\n' + message['content'][0]['text'] + '\n<</SYS>>\n\n' }}"
    "{% elif message['role'] == 'user' %}{{ '[INST] ' }}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'image') %}"
    "{{ '<image>\n' }}{% endfor %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ content['text'] }}{% endfor %}{{ ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% for content in message['content'] | selectattr('type', 'equalto', 'text') %}"
    "{{ ' ' + content['text'] + '</s>' }}{% endfor %}"
    "{% endif %}{% endfor %}"
)

#: anyres grid (multiples of the 28 px tile): 1x2, 2x1, 2x2, 1x3, 3x1 tiles
GRID_PINPOINTS = [[28, 56], [56, 28], [56, 56], [84, 28], [28, 84]]


def build(out_dir: Path) -> Path:
    """Save a tiny random ``LlavaNextForConditionalGeneration`` + processor to ``out_dir``."""
    from transformers import (
        CLIPVisionConfig,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        MistralConfig,
    )
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    out_dir = Path(out_dir)
    tok = build_tokenizer_for_llava(LLAVA_NEXT_CHAT_TEMPLATE)
    side = VISION_CONFIG["image_size"]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        patch_size=VISION_CONFIG["patch_size"],
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=LLAVA_NEXT_CHAT_TEMPLATE,
    )
    config = LlavaNextConfig(
        vision_config=CLIPVisionConfig(**VISION_CONFIG),
        text_config=MistralConfig(
            **TEXT_CONFIG,
            vocab_size=len(tok),
            **special_ids(tok),
        ),
        image_token_index=processor.image_token_id,
        image_grid_pinpoints=GRID_PINPOINTS,
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
    )
    model = instantiate(LlavaNextForConditionalGeneration, config)
    return save_all(out_dir, model, processor)
