"""Tiny random ``Idefics3ForConditionalGeneration`` with an offline tokenizer and processor.

Vision: 32x32 crops, patch 8 (16 patches), pixel-shuffle scale 2, so 4 ``<image>`` tokens per
crop; images are resized to a 64 px longest edge and split into up to 2x2 crops plus the
global image. Text: a 2-layer Llama (d=32). The chat template is Idefics3's format
(``<|begin_of_text|>User:<image>...<end_of_utterance>\\n``), written here.
"""

from __future__ import annotations

from pathlib import Path

from .common import instantiate, save_all, special_ids, tower

ROW_COL = [f"<row_{i + 1}_col_{j + 1}>" for i in range(6) for j in range(6)]
IMAGE_TOKENS = [
    "<fake_token_around_image>",
    "<image>",
    "<end_of_utterance>",
    "<global-img>",
    *ROW_COL,
]

IDEFICS3_CHAT_TEMPLATE = (
    "<|begin_of_text|>{% for message in messages %}{{ message['role'] | capitalize }}"
    "{% if message['content'] is string %}{{ ': ' + message['content'] }}{% else %}"
    "{% if message['content'][0]['type'] == 'image' %}{{ ':' }}{% else %}{{ ': ' }}{% endif %}"
    "{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}"
    "{% elif part['type'] == 'image' %}{{ '<image>' }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)

SMOLVLM_CHAT_TEMPLATE = "<|im_start|>" + IDEFICS3_CHAT_TEMPLATE[len("<|begin_of_text|>") :]

#: variant -> (transformers class prefix, image-processor module, bos, eos, pad, template)
VARIANTS = {
    "idefics3": (
        "Idefics3",
        "idefics3.image_processing_pil_idefics3",
        "<|begin_of_text|>",
        "<|end_of_text|>",
        "<pad>",
        IDEFICS3_CHAT_TEMPLATE,
    ),
    "smolvlm": (
        "SmolVLM",
        "smolvlm.image_processing_pil_smolvlm",
        "<|im_start|>",
        "<end_of_utterance>",
        "<|im_end|>",
        SMOLVLM_CHAT_TEMPLATE,
    ),
}

#: tiny image geometry shared by the config and the image processor
VISION = dict(image_size=32, patch_size=8)
SCALE_FACTOR = 2
IMAGE_SEQ_LEN = (32 // 8) ** 2 // SCALE_FACTOR**2


def _configs(tok):
    text = tower(
        32,
        model_type="llama",
        vocab_size=len(tok),
        num_key_value_heads=1,
        max_position_embeddings=512,
        **special_ids(tok),
    )
    return text, tower(16, **VISION)


def build_variant(out_dir: Path, variant: str = "idefics3") -> Path:
    """Build the ``idefics3`` or ``smolvlm`` tiny checkpoint into ``out_dir``."""
    import importlib

    import transformers

    from ..tokenizer import build_tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {sorted(VARIANTS)}")
    out_dir = Path(out_dir)
    prefix, image_module, bos, eos, pad, template = VARIANTS[variant]
    Config = getattr(transformers, f"{prefix}Config")
    Model = getattr(transformers, f"{prefix}ForConditionalGeneration")
    module = importlib.import_module(f"transformers.models.{image_module}")
    ImageProcessor = getattr(module, f"{prefix}ImageProcessorPil")

    tok = build_tokenizer(
        [bos, eos, pad, *IMAGE_TOKENS],
        bos_token=bos,
        eos_token=eos,
        pad_token=pad,
        chat_template=template,
    )
    text, vision = _configs(tok)
    config = Config(
        text_config=text,
        vision_config=vision,
        scale_factor=SCALE_FACTOR,
        image_token_id=tok.convert_tokens_to_ids("<image>"),
    )
    model = instantiate(Model, config)
    image_processor = ImageProcessor(size={"longest_edge": 64}, max_image_size={"longest_edge": 32})
    if variant == "idefics3":
        from transformers import Idefics3Processor

        proc = Idefics3Processor(
            image_processor=image_processor,
            tokenizer=tok,
            image_seq_len=IMAGE_SEQ_LEN,
            chat_template=template,
        )
        return save_all(out_dir, model, proc)
    # SmolVLMProcessor needs num2words and a torchvision video processor: save the parts
    return save_all(out_dir, model, tok, image_processor)


def build(out_dir: Path) -> Path:
    """Save a tiny Idefics3 checkpoint (see the module docstring)."""
    return build_variant(out_dir, "idefics3")
