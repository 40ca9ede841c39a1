"""The embedding cache: safetensors files keyed by model, data side, pooling and layer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_save_safetensors

logger = logging.getLogger(__name__)

__all__ = ["EmbeddingCache", "model_fingerprint", "side_fingerprint"]


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def model_fingerprint(adapter: Any) -> dict:
    """Model name plus, for a local folder, the sizes / mtimes of its files."""
    name = str(getattr(adapter, "name_or_path", None) or type(adapter).__name__)
    fp: dict[str, Any] = {"model": name, "adapter": type(adapter).__name__}
    p = Path(name)
    if p.is_dir():
        fp["files"] = sorted(
            (f.name, f.stat().st_size, int(f.stat().st_mtime))
            for f in p.iterdir()
            if f.is_file() and f.suffix in (".safetensors", ".bin", ".json", ".model")
        )
    dtype = getattr(adapter, "dtype", None)
    fp["dtype"] = str(dtype)
    return fp


def side_fingerprint(files: Sequence[Path], ids: Sequence[str], kind: str, prompt: str) -> dict:
    """Files (name, size, mtime), ids and the prompt of one side."""
    return {
        "files": [
            (Path(f).name, Path(f).stat().st_size, int(Path(f).stat().st_mtime)) for f in files
        ],
        "ids": hashlib.sha256("\n".join(ids).encode()).hexdigest(),
        "n": len(ids),
        "kind": kind,
        "prompt": prompt,
    }


class EmbeddingCache:
    """Safetensors files of embeddings keyed by model + data + pooling + layer.

    Parameters
    ----------
    root : Path | None
        Folder (None: caching off).
    """

    def __init__(self, root: str | os.PathLike | None):
        self.root = Path(root) if root is not None else None

    def key(
        self, model_fp: dict, data_fp: dict, pool: str, layer: str, extra: dict | None = None
    ) -> str:
        return _hash(
            {"model": model_fp, "data": data_fp, "pool": pool, "layer": layer, **(extra or {})}
        )[:24]

    def path(self, key: str, side: str) -> Path | None:
        return None if self.root is None else self.root / f"{side}-{key}.safetensors"

    def load(self, key: str, side: str, n: int) -> torch.Tensor | None:
        p = self.path(key, side)
        if p is None or not p.exists():
            return None
        from safetensors.torch import load_file

        try:
            t = load_file(str(p))["embeddings"]
        except Exception as exc:  # a truncated / foreign file: recompute
            logger.warning("ignoring unreadable cache file %s (%s)", p, exc)
            return None
        if t.shape[0] != n:
            logger.warning("cache file %s has %d rows, expected %d; recomputing", p, t.shape[0], n)
            return None
        logger.info("loaded cached %s embeddings %s from %s", side, tuple(t.shape), p)
        return t

    def save(self, key: str, side: str, emb: torch.Tensor, meta: dict) -> Path | None:
        p = self.path(key, side)
        if p is None:
            return None
        atomic_save_safetensors(
            p, {"embeddings": emb.cpu()}, {k: str(v) for k, v in meta.items()}, what="embeddings"
        )
        logger.info("cached %s embeddings %s to %s", side, tuple(emb.shape), p)
        return p
