"""What every tiny checkpoint builder shares: token ids in configs, a seeded model, saving."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["instantiate", "save_all", "special_ids"]


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
