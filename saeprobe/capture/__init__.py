"""Capture residual-stream activations of an MLLM with per-token labels.

:func:`iter_captures` (:mod:`.stream`) streams :class:`CaptureBatch` objects (per-token
activations of the attended tokens plus pooled embeddings); :func:`capture` collects them in
memory or writes them to activation stores (:mod:`.to_store`: resumable, one store per hook
point, one set of shards per rank). Imports models' adapters only through their interface,
plus ``hooks``, ``pooling`` and ``store``.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .. import dtypes
from .._types import Item
from ..store import load_pooled, merge_pooled
from .result import CaptureResult, merge_batches
from .stream import CaptureBatch, iter_captures, resolve_points
from .to_store import capture_to_store, store_dirs

__all__ = [
    "CaptureBatch",
    "CaptureResult",
    "capture",
    "capture_to_store",
    "iter_captures",
    "load_pooled",
    "merge_pooled",
    "resolve_points",
    "store_dirs",
]


def capture(
    adapter: Any,
    items: Iterable[Item] | Sequence[Item],
    hook_points: str | int | Sequence[str | int] = ("final_norm",),
    *,
    out: str | None = None,
    batch_size: int = 8,
    pools: Sequence[str] = ("mean",),
    tokens: bool = True,
    skip_system: bool = False,
    tower: str | None = None,
    bridge: Any = None,
    dtype: torch.dtype | str | None = None,
    limit: int | None = None,
    progress: bool = True,
    total: int | None = None,
    **store_kwargs: Any,
) -> CaptureResult:
    """Capture activations of ``items`` in memory, or into an activation store at ``out``.

    With ``out``, one store per hook point is written under ``out/<hook point>/`` (a single
    hook point writes directly into ``out``); the capture resumes where a killed run
    stopped, and under ``torchrun`` each rank captures its share into its own shards.
    See :func:`iter_captures` for the other parameters.
    """
    dtype = dtypes.to_torch(dtype)
    if limit is not None:
        if int(limit) < 1:
            raise ValueError(f"limit must be a positive number of items, got {limit}")
        items = itertools.islice(items, limit)
        total = min(total, limit) if total is not None else limit
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if out is not None:
        return capture_to_store(
            adapter,
            items,
            hook_points,
            out=out,
            batch_size=batch_size,
            pools=pools,
            skip_system=skip_system,
            tower=tower,
            bridge=bridge,
            dtype=dtype,
            progress=progress,
            total=total,
            **store_kwargs,
        )
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    parts: list[CaptureBatch] = []
    bar = tqdm(total=total, unit="item", desc="capture", disable=not progress)
    for cb in iter_captures(
        adapter,
        items,
        hook_points,
        batch_size=batch_size,
        pools=pools,
        tokens=tokens,
        skip_system=skip_system,
        tower=tower,
        bridge=bridge,
        dtype=dtype,
    ):
        parts.append(cb)
        bar.update(len(cb.item_ids))
        bar.set_postfix(tokens=sum(p.n_tokens for p in parts), refresh=False)
    bar.close()
    return merge_batches(parts, time.perf_counter() - t0)
