"""Tiny random PaliGemma checkpoint (offline): SigLIP tower, Gemma decoder, PaliGemmaProcessor.

:func:`build_paligemma` is shared with the PaliGemma2 builder (Gemma2 text config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import decoder, instantiate, save_all, special_ids, tower

#: Gemma special tokens in the order of their real ids, plus PaliGemma's image token
SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"]

#: tiny SigLIP tower: 28 px images, 7 px patches -> 16 image tokens
VISION_CONFIG: dict[str, Any] = tower(32, image_size=28, patch_size=7, vision_use_head=False)

#: tiny Gemma decoder
TEXT_CONFIG: dict[str, Any] = decoder(num_key_value_heads=1, head_dim=12)


def build_paligemma(out_dir: Path, text_model_type: str, text_overrides: dict[str, Any]) -> Path:
    """Save a tiny ``PaliGemmaForConditionalGeneration`` whose decoder is ``text_model_type``."""
    from transformers import (
        AutoConfig,
        PaliGemmaConfig,
        PaliGemmaForConditionalGeneration,
        PaliGemmaProcessor,
        SiglipVisionConfig,
    )
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    from ..tokenizer import build_tokenizer

    out_dir = Path(out_dir)
    tok = build_tokenizer(
        SPECIAL_TOKENS,
        vocab_size=400,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    side = VISION_CONFIG["image_size"]
    image_processor = SiglipImageProcessorPil(
        size={"height": side, "width": side}, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    image_processor.image_seq_length = (side // VISION_CONFIG["patch_size"]) ** 2
    # adds the <loc....> / <seg...> tokens to the tokenizer, so read the vocab size after
    processor = PaliGemmaProcessor(image_processor=image_processor, tokenizer=tok)
    text_config = AutoConfig.for_model(
        text_model_type,
        **TEXT_CONFIG,
        **text_overrides,
        vocab_size=len(tok),
        **special_ids(tok),
    )
    config = PaliGemmaConfig(
        vision_config=SiglipVisionConfig(**VISION_CONFIG),
        text_config=text_config,
        image_token_index=processor.image_token_id,
        vocab_size=len(tok),
        projection_dim=TEXT_CONFIG["hidden_size"],
        hidden_size=TEXT_CONFIG["hidden_size"],
    )
    model = instantiate(PaliGemmaForConditionalGeneration, config)
    return save_all(out_dir, model, processor)


def build(out_dir: Path) -> Path:
    """Save a tiny random PaliGemma (Gemma decoder) and its processor to ``out_dir``."""
    return build_paligemma(out_dir, "gemma", {})
