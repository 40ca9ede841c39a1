"""Tiny random Chameleon checkpoint (offline): VQ-VAE image tokenizer + decoder.

The VQ-VAE sees 32x32 images and downsamples 8x, so each image becomes 4x4 = 16 codes;
its 16-entry codebook maps to the ``IMGIMG<digits as letters>Z`` tokens of the
tokenizer through ``config.vocabulary_map``, as in the real checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .common import decoder, instantiate, prepend_bos, save_all, special_ids

#: image size seen by the tiny VQ-VAE (real: 512)
IMAGE_SIZE = 32
#: number of VQ codebook entries (real: 8192)
NUM_CODES = 16

#: Chameleon's special tokens: bos, pad, eos, image placeholder, boi, eoi, chat separator
SPECIAL_TOKENS = ["<s>", "<pad>", "</s>", "<image>", "<racm3:break>", "<eoss>", "<reserved08706>"]

VQ_CONFIG: dict[str, Any] = {
    "embed_dim": 8,
    "num_embeddings": NUM_CODES,
    "latent_channels": 8,
    "resolution": IMAGE_SIZE,
    "base_channels": 32,  # GroupNorm uses 32 groups
    "channel_multiplier": [1, 1, 1, 1],  # 3 downsamplings: 32 -> 4
    "num_res_blocks": 1,
}

TEXT_CONFIG: dict[str, Any] = decoder()


def image_code_token(code: int) -> str:
    """Token name of VQ code ``code`` (digits written as letters A..J)."""
    return "IMGIMG" + "".join(chr(ord("A") + int(c)) for c in str(code)) + "Z"


def build(out_dir: Path) -> Path:
    """Save a tiny random ``ChameleonForConditionalGeneration`` + processor to ``out_dir``."""
    from transformers import (
        ChameleonConfig,
        ChameleonForConditionalGeneration,
        ChameleonProcessor,
        ChameleonVQVAEConfig,
    )
    from transformers.models.chameleon.image_processing_pil_chameleon import (
        ChameleonImageProcessorPil,
    )

    from ..tokenizer import build_tokenizer

    out_dir = Path(out_dir)
    tok = build_tokenizer(
        [*SPECIAL_TOKENS, *(image_code_token(i) for i in range(NUM_CODES))],
        vocab_size=400,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        sep_token="<reserved08706>",
    )
    prepend_bos(tok, "<s>")
    image_processor = ChameleonImageProcessorPil(
        size={"shortest_edge": IMAGE_SIZE}, crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
    )
    downsample = 2 ** (len(VQ_CONFIG["channel_multiplier"]) - 1)
    processor = ChameleonProcessor(
        image_processor=image_processor,
        tokenizer=tok,
        image_seq_length=(IMAGE_SIZE // downsample) ** 2,
    )
    config = ChameleonConfig(
        **TEXT_CONFIG,
        vocab_size=len(tok),
        **special_ids(tok),
        vq_config=ChameleonVQVAEConfig(**VQ_CONFIG).to_dict(),
        vocabulary_map=dict(tok.get_vocab()),
    )
    model = instantiate(ChameleonForConditionalGeneration, config)
    return save_all(out_dir, model, processor)
