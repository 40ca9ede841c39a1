"""Tiny random ``Gemma3ForConditionalGeneration`` with an offline tokenizer and ``Gemma3Processor``.

Vision: a SigLIP tower on 32x32 images, patch 8 (16 patches) average-pooled to 4 image soft
tokens. Text: a 2-layer Gemma3 (d=32, one sliding-window layer with window 16, one global
layer). The chat template is Gemma 3's format (``<bos><start_of_turn>user\\n...<end_of_turn>\\n``,
user text trimmed), written here.
"""

from __future__ import annotations

from pathlib import Path

from .common import instantiate, save_all, special_ids, tower

BOS, EOS, PAD = "<bos>", "<eos>", "<pad>"
BOI, EOI, IMAGE = "<start_of_image>", "<end_of_image>", "<image_soft_token>"
TURN_START, TURN_END = "<start_of_turn>", "<end_of_turn>"
MM_TOKENS = 4

GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- if messages[0]['content'] is string -%}{%- set prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- else -%}{%- set prefix = messages[0]['content'][0]['text'] + '\n\n' -%}{%- endif -%}"
    "{%- set turns = messages[1:] -%}"
    "{%- else -%}{%- set prefix = '' -%}{%- set turns = messages -%}{%- endif -%}"
    "{%- for message in turns -%}"
    "{%- set role = 'model' if message['role'] == 'assistant' else message['role'] -%}"
    "{{ '<start_of_turn>' + role + '\n' + (prefix if loop.first else '') }}"
    "{%- if message['content'] is string -%}{{ message['content'] | trim }}"
    "{%- else -%}{%- for part in message['content'] -%}"
    "{%- if part['type'] == 'image' -%}{{ '<start_of_image>' }}"
    "{%- elif part['type'] == 'text' -%}{{ part['text'] | trim }}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<start_of_turn>model\n' }}{%- endif -%}"
)


def build(out_dir: Path) -> Path:
    """Save a tiny Gemma 3 vision-language checkpoint into ``out_dir``."""
    import torch
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    from ..tokenizer import build_tokenizer

    out_dir = Path(out_dir)
    tok = build_tokenizer(
        [PAD, EOS, BOS, TURN_START, TURN_END, BOI, EOI, IMAGE],
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        extra_special_tokens={"boi_token": BOI, "eoi_token": EOI, "image_token": IMAGE},
    )
    ids = {t: tok.convert_tokens_to_ids(t) for t in (BOI, EOI, IMAGE)}
    config = Gemma3Config(
        text_config=tower(
            32,
            vocab_size=len(tok),
            num_key_value_heads=1,
            head_dim=16,
            sliding_window=16,
            layer_types=["sliding_attention", "full_attention"],
            max_position_embeddings=512,
            **special_ids(tok),
        ),
        vision_config=tower(16, image_size=32, patch_size=8, vision_use_head=False),
        mm_tokens_per_image=MM_TOKENS,
        boi_token_index=ids[BOI],
        eoi_token_index=ids[EOI],
        image_token_index=ids[IMAGE],
    )
    model = instantiate(Gemma3ForConditionalGeneration, config)
    with torch.no_grad():  # the projector starts at zero: give the image tokens some signal
        w = model.model.multi_modal_projector.mm_input_projection_weight
        w.normal_(0.0, 0.5)
    ip = Gemma3ImageProcessorPil(size={"height": 32, "width": 32})
    proc = Gemma3Processor(
        image_processor=ip,
        tokenizer=tok,
        chat_template=GEMMA3_CHAT_TEMPLATE,
        image_seq_length=MM_TOKENS,
    )
    return save_all(out_dir, model, proc)
