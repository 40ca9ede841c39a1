"""What every tiny checkpoint builder shares: token ids in configs, a seeded model, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["decoder", "instantiate", "prepend_bos", "save_all", "special_ids", "tower"]


def tower(width: int, **overrides: Any) -> dict[str, Any]:
    """Config fields of a tiny transformer stack: ``width`` wide, MLP ``2 * width``, 2 layers
    of 2 heads (``overrides`` change or add fields)."""
    return {
        "hidden_size": width,
        "intermediate_size": 2 * width,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        **overrides,
    }


def decoder(**overrides: Any) -> dict[str, Any]:
    """The tiny decoder LLM shared by most builders: d = 48, 3 layers, GQA 4 / 2 heads."""
    base = {"num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2}
    return tower(48, **{**base, "max_position_embeddings": 512, **overrides})


def prepend_bos(tok: Any, bos: str) -> Any:
    """Make a fast tokenizer prepend ``bos`` to every text (as Llama-family tokenizers do)."""
    from tokenizers.processors import TemplateProcessing

    bos_id = tok.convert_tokens_to_ids(bos)
    tok._tokenizer.post_processor = TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, bos_id)]
    )
    return tok


def special_ids(tok: Any) -> dict[str, int | None]:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` of a tokenizer, for a config."""
    return {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.pad_token_id,
    }


def instantiate(model_cls: type, config: Any, seed: int = 0) -> Any:
    """A randomly initialised model of ``config`` (seeded), in eval mode; records the class
    as the config's architecture (what ``saeprobe.load_model`` dispatches on)."""
    import torch

    config.architectures = [model_cls.__name__]
    torch.manual_seed(seed)
    return model_cls(config).eval()


def save_all(out_dir: Path, *parts: Any) -> Path:
    """``save_pretrained`` each of ``parts`` (model, processor, tokenizer, ...) into ``out_dir``."""
    for part in parts:
        part.save_pretrained(out_dir)
    return Path(out_dir)
