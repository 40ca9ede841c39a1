"""Tiny random LLaVA-NeXT checkpoint (offline): CLIP tower, Mistral decoder, anyres tiles.

The image grid pinpoints are the real ones scaled down to 28 px tiles, so two photos of
different aspect ratios get different numbers of image tokens.
"""

from __future__ import annotations

from pathlib import Path

from .llava import VISION_CONFIG, build_llava_family

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
    from transformers import MistralConfig
    from transformers.models.llava_next.image_processing_pil_llava_next import (
        LlavaNextImageProcessorPil,
    )

    side = VISION_CONFIG["image_size"]
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        image_grid_pinpoints=GRID_PINPOINTS,
    )
    return build_llava_family(
        out_dir,
        "LlavaNext",
        MistralConfig,
        image_processor,
        LLAVA_NEXT_CHAT_TEMPLATE,
        image_token_index=None,  # the processor's image token id
        image_grid_pinpoints=GRID_PINPOINTS,
    )
