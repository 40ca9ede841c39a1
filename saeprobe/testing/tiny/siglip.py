"""Tiny random ``SiglipModel`` (and a NaFlex ``Siglip2Model``) with offline processors."""

from __future__ import annotations

from pathlib import Path

from .clip import build_tokenizer_with_template
from .common import instantiate, save_all, tower

EOS = "</s>"
UNK = "<unk>"
MAX_LEN = 16


def _configs(tok):
    text = tower(
        32,
        vocab_size=len(tok),
        max_position_embeddings=MAX_LEN,
        pad_token_id=tok.pad_token_id,
        eos_token_id=tok.eos_token_id,
        bos_token_id=None,
        projection_size=16,
    )
    return text, tower(16, image_size=32, patch_size=8)


def build(out_dir: Path) -> Path:
    """Save a tiny SigLIP (text d=32 padded to 16 tokens, vision d=16, 32x32 images, patch 8)."""
    from transformers import SiglipConfig, SiglipModel, SiglipProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    out_dir = Path(out_dir)
    tok = build_tokenizer_with_template(None, EOS, EOS, UNK, model_max_length=MAX_LEN)
    text, vision = _configs(tok)
    config = SiglipConfig(text_config=text, vision_config=vision)
    model = instantiate(SiglipModel, config)
    ip = SiglipImageProcessorPil(size={"height": 32, "width": 32})
    return save_all(out_dir, model, SiglipProcessor(image_processor=ip, tokenizer=tok))


def build_siglip2(out_dir: Path) -> Path:
    """Save a tiny NaFlex ``Siglip2Model`` (patch 8, at most 16 patches per image)."""
    from transformers import Siglip2Config, Siglip2Model, Siglip2Processor
    from transformers.models.siglip2.image_processing_pil_siglip2 import (
        Siglip2ImageProcessorPil,
    )

    out_dir = Path(out_dir)
    tok = build_tokenizer_with_template(None, EOS, EOS, UNK, model_max_length=MAX_LEN)
    text, vision = _configs(tok)
    vision.pop("image_size")
    vision["num_patches"] = 16
    config = Siglip2Config(text_config=text, vision_config=vision)
    model = instantiate(Siglip2Model, config)
    ip = Siglip2ImageProcessorPil(patch_size=8, max_num_patches=16)
    return save_all(out_dir, model, Siglip2Processor(image_processor=ip, tokenizer=tok))
