"""Tiny random ``CLIPModel`` with an offline tokenizer and the PIL CLIP image processor."""

from __future__ import annotations

from pathlib import Path

from .common import instantiate, save_all, special_ids, tower

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"


def build_tokenizer_with_template(
    bos: str | None, eos: str, pad: str, unk: str | None = None, **kw
):
    """Offline BPE tokenizer whose post-processor wraps every text as ``[BOS] ... EOS``."""
    from tokenizers import processors

    from ..tokenizer import build_tokenizer

    specials = [t for t in (bos, eos, pad, unk) if t]
    tok = build_tokenizer(
        specials, bos_token=bos, eos_token=eos, pad_token=pad, unk_token=unk, **kw
    )
    pairs = [(eos, tok.convert_tokens_to_ids(eos))]
    single = f"$A {eos}"
    if bos:
        pairs.insert(0, (bos, tok.convert_tokens_to_ids(bos)))
        single = f"{bos} {single}"
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single=single, special_tokens=pairs
    )
    return tok


def build(out_dir: Path) -> Path:
    """Save a tiny CLIP (text d=32, vision d=48, 2 layers each, 32x32 images, patch 8)."""
    from transformers import CLIPConfig, CLIPModel, CLIPProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    out_dir = Path(out_dir)
    tok = build_tokenizer_with_template(BOS, EOS, EOS, model_max_length=24)
    config = CLIPConfig(
        text_config=tower(32, vocab_size=len(tok), max_position_embeddings=24, **special_ids(tok)),
        vision_config=tower(48, image_size=32, patch_size=8),
        projection_dim=16,
    )
    model = instantiate(CLIPModel, config)
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=tok)
    return save_all(out_dir, model, processor)
