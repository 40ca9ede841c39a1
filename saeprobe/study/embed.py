"""Embedding the items of several retrieval tasks once per model (every layer of an MLLM from
one forward pass, so the per-layer sweep costs no extra forward)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from typing import Any

import torch

from .._types import Item
from ..retrieval import embed_items

logger = logging.getLogger(__name__)

__all__ = ["EmbeddedTasks", "embed_tasks", "item_key"]


def item_key(item: Item) -> str:
    """Content key of an input: its prompt, text and image pixels (ids differ across tasks
    for the same input)."""
    h = hashlib.sha1()
    h.update((item.prompt or "").encode())
    h.update(b"\x00")
    h.update((item.text or "").encode())
    h.update(b"\x00")
    if item.image is not None:
        img = item.image
        h.update(f"{img.mode}{img.size}".encode())
        h.update(img.tobytes())
    return h.hexdigest()


class EmbeddedTasks:
    """Per task and side, the embedding rows of one model.

    Attributes
    ----------
    layers : list[str]
        Hook points embedded (``final_norm`` last for MLLMs; ``native`` for dual encoders).
    table : dict[str, Tensor]
        Per hook point, ``[U, d]`` float32 rows of the unique inputs.
    rows : dict[(task, side), LongTensor]
        Rows of ``table`` for each item of a side, in the side's order.
    """

    def __init__(self, layers: list[str], table: dict[str, torch.Tensor], rows: dict):
        self.layers, self.table, self.rows = layers, table, rows

    @property
    def main(self) -> str:
        """The embedding the paper scores (``final_norm`` or ``native``)."""
        return self.layers[-1]

    def get(self, task: str, side: str, layer: str | None = None) -> torch.Tensor:
        """``[n, d]`` embeddings (raw, not normalised) of a task side."""
        return self.table[layer or self.main][self.rows[(task, side)]]


def embed_tasks(
    adapter: Any,
    sides: dict[tuple[str, str], Sequence[Item]],
    *,
    all_layers: bool = True,
    batch_size: int = 8,
) -> EmbeddedTasks:
    """Embed every distinct input of ``sides`` (``{(task, side): items}``) once.

    MLLMs: mean pooling (the paper's) at ``resid_post.L`` for every layer (when
    ``all_layers``) and at ``final_norm``; dual encoders: their projected embedding.
    """
    keys: dict[str, int] = {}
    unique: list[Item] = []
    rows = {}
    for name, items in sides.items():
        idx = []
        for it in items:
            k = item_key(it)
            if k not in keys:
                keys[k] = len(unique)
                unique.append(it)
            idx.append(keys[k])
        rows[name] = torch.tensor(idx, dtype=torch.long)
    dual = bool(getattr(adapter, "is_dual_encoder", False))
    if dual:
        layers = ["native"]
    else:
        layers = [f"resid_post.{i}" for i in range(adapter.n_layers)] if all_layers else []
        layers.append("final_norm")
    n_items = sum(len(v) for v in rows.values())
    logger.info("embedding %d distinct inputs (%d task items)", len(unique), n_items)
    # batches of like inputs (texts by length, then images, then image+text) pad little
    order = sorted(range(len(unique)), key=lambda i: _length_key(unique[i]))
    table = embed_items(
        adapter,
        [unique[i] for i in order],
        len(unique),
        layers=[] if dual else layers,
        pool="native" if dual else "mean",
        batch_size=batch_size,
        desc=f"embed {getattr(adapter, 'name_or_path', '')}"[:40],
    )
    back = torch.empty(len(order), dtype=torch.long)
    back[torch.tensor(order, dtype=torch.long)] = torch.arange(len(order))
    return EmbeddedTasks(layers, {k: v.float()[back] for k, v in table.items()}, rows)


def _length_key(item: Item) -> tuple[int, int]:
    return (item.image is not None, len(item.text or ""))
