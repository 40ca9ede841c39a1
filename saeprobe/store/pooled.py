"""Pooled embeddings of a capture: gathered from the stores' shards into one file.

Each shard carries the pooled rows of its own samples (``pooled.<pool>`` [S, d]), so there
is exactly one row per item through any resume or repair. After a capture,
:func:`merge_pooled` writes ``OUT/pooled.safetensors`` (keys ``<hook>.<pool>`` and
``sample_index``) and ``OUT/pooled.json`` (``item_ids``, ``keys``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from ..atomic import atomic_save_safetensors, atomic_write_json
from .format import StoreError
from .reader import ActivationStore

__all__ = ["POOLED_FILE", "load_pooled", "merge_pooled"]

POOLED_FILE = "pooled.safetensors"
POOLED_META = "pooled.json"


def merge_pooled(out: str | os.PathLike, stores: Mapping[str, str | os.PathLike]) -> dict | None:
    """Write ``out/pooled.safetensors`` from the pooled rows in the shards of ``stores``
    (``{hook point: store folder}``); returns the tensors (None when nothing was pooled)."""
    out = Path(out)
    merged: dict[str, torch.Tensor] = {}
    index, ids = None, None
    for hook, path in stores.items():
        store = ActivationStore(path)
        if not store.pooled_keys:
            continue
        rows, sid, item_ids = store.read_pooled()
        if index is not None and not torch.equal(index, sid):
            raise StoreError(
                f"pooled rows of {path} cover other samples than those of the first hook "
                "point: capture all hook points in one run"
            )
        index, ids = sid, item_ids
        merged.update({f"{hook}.{k}": v for k, v in rows.items()})
    if index is None:
        return None
    merged["sample_index"] = index
    atomic_save_safetensors(out / POOLED_FILE, merged, what="pooled embeddings")
    atomic_write_json(out / POOLED_META, {"item_ids": ids, "keys": sorted(merged)})
    return merged


def load_pooled(out: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Merged pooled embeddings: ``({"<hook>.<pool>": [N, d], "sample_index": [N]}, item_ids)``."""
    from safetensors.torch import load_file

    out = Path(out)
    path = out / POOLED_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the capture did not store pooled embeddings or has not finished"
        )
    meta = json.loads((out / POOLED_META).read_text(encoding="utf-8"))
    return load_file(str(path)), meta["item_ids"]
