"""Streaming capture: per-token activations and pooled embeddings, one batch at a time."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .._types import Item, Modality
from ..hooks import HookPoint, is_bridge, parse_hook_points, run_with_hooks
from ..pooling import NATIVE, POOLS, check_pools

logger = logging.getLogger(__name__)

__all__ = ["CaptureBatch", "TokenRecords", "iter_captures", "resolve_points"]


@dataclass
class TokenRecords:
    """Per-token activations with their labels, and per-item pooled embeddings.

    Attributes
    ----------
    acts : dict[str, Tensor]
        Per hook point, ``[n_tokens, d]`` activations of the kept tokens (attended, and
        not SYSTEM when ``skip_system``), flattened row by row.
    sample_id : LongTensor [n_tokens]
        Index of each token's item in the data order.
    position : IntTensor [n_tokens]
        Position of the token among its item's attended tokens (0-based).
    token_id : LongTensor [n_tokens]
    modality : Int8Tensor [n_tokens]
        :class:`~saeprobe.Modality` labels.
    pooled : dict[str, dict[str, Tensor]]
        ``pooled[hook][pool]`` is ``[n_items, d]`` float32 (``pooled["native"]["native"]``
        for a dual encoder's own embedding), rows in :attr:`sample_index` order.
    sample_index : LongTensor [n_items]
        Data-order index of each item.
    item_ids : list[str]
    """

    acts: dict[str, torch.Tensor]
    sample_id: torch.Tensor
    position: torch.Tensor
    token_id: torch.Tensor
    modality: torch.Tensor
    pooled: dict[str, dict[str, torch.Tensor]]
    sample_index: torch.Tensor
    item_ids: list[str]


@dataclass
class CaptureBatch(TokenRecords):
    """Activations of one model batch (the fields of :class:`TokenRecords`, plus the
    ``tower`` a dual encoder ran)."""

    tower: str | None = None

    @property
    def n_tokens(self) -> int:
        return int(self.sample_id.numel())


def _batched(items: Iterable[tuple[int, Item]], size: int, key) -> Iterator[list[tuple[int, Item]]]:
    """Group (index, item) pairs into batches of ``size`` that share ``key(item)``."""
    batch: list[tuple[int, Item]] = []
    current = None
    for index, item in items:
        k = key(item)
        if batch and (len(batch) >= size or k != current):
            yield batch
            batch = []
        current = k
        batch.append((index, item))
    if batch:
        yield batch


def resolve_points(target: Any, hook_points, tower: str | None = None) -> list[HookPoint]:
    """Resolve hook point names against an adapter (or a TransformerLens bridge)."""
    if is_bridge(target):
        return parse_hook_points(hook_points, int(target.cfg.n_layers), allow_tl=True)
    n_layers = len(target.layers(tower if tower is not None else target.towers[0]))
    return parse_hook_points(hook_points, n_layers)


def _check_args(adapter: Any, pools: Sequence[str], batch_size: int, tower: str | None):
    pools = check_pools(pools)
    if NATIVE in pools and not getattr(adapter, "is_dual_encoder", False):
        raise ValueError(
            "'native' pooling needs a dual encoder (CLIP, SigLIP); use 'mean' for MLLMs"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if tower is not None and tower not in adapter.towers:
        raise ValueError(f"unknown tower {tower!r}; {type(adapter).__name__} has {adapter.towers}")
    return pools


def _run_batch(adapter, target, items, tower, points, pools, tokens, stop_early):
    """Encode and run one batch: ``(batch, hidden {hook: [B, T, d]}, pooled)``."""
    dual = getattr(adapter, "is_dual_encoder", False)
    batch = adapter.encode(items, tower=tower) if dual else adapter.encode(items)
    batch = batch.to(adapter.device)
    hidden = {}
    if tokens or any(p != NATIVE for p in pools):
        hidden = run_with_hooks(target, batch, points, tower=tower, stop_early=stop_early)
    mask = batch.attention_mask.bool()
    modality = batch.modality.to(torch.int8)
    pooled = {
        name: {p: POOLS[p](h, mask, modality).cpu() for p in pools if p != NATIVE}
        for name, h in hidden.items()
    }
    if NATIVE in pools:
        with torch.inference_mode():
            pooled[NATIVE] = {NATIVE: adapter.embed(batch).float().cpu()}
    return batch, hidden, pooled


def _tokens_of(batch, hidden, keep, all_index, dtype) -> dict[str, torch.Tensor]:
    """Flattened per-token tensors of the kept tokens (``keep [B, T]``)."""
    mask = batch.attention_mask.bool()
    if keep is None:
        empty = torch.empty(0, dtype=torch.long)
        return {
            "acts": {},
            "sample_id": empty,
            "position": empty.to(torch.int32),
            "token_id": empty,
            "modality": empty.to(torch.int8),
        }
    positions = (mask.long().cumsum(1) - 1).to(torch.int32)
    rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
    return {
        "acts": {
            name: (h[keep] if dtype is None else h[keep].to(dtype)).cpu()
            for name, h in hidden.items()
        },
        "sample_id": all_index.to(mask.device)[rows[keep]].cpu(),
        "position": positions[keep].cpu(),
        "token_id": batch.input_ids[keep].long().cpu(),
        "modality": batch.modality.to(torch.int8)[keep].cpu(),
    }


def iter_captures(
    adapter: Any,
    items: Iterable[Item],
    hook_points: str | int | Sequence[str | int] = ("final_norm",),
    *,
    batch_size: int = 8,
    pools: Sequence[str] = ("mean",),
    tokens: bool = True,
    skip_system: bool = False,
    start: int = 0,
    want: Callable[[int], bool] | None = None,
    tower: str | None = None,
    bridge: Any = None,
    dtype: torch.dtype | None = None,
    stop_early: bool = True,
    indices: Iterable[int] | None = None,
) -> Iterator[CaptureBatch]:
    """Stream activations of ``items`` at ``hook_points``.

    Parameters
    ----------
    adapter : ModelAdapter
        Builds the batches (and runs the model unless ``bridge`` is given).
    items : iterable of Item
        Inputs in data order; the i-th item has sample index ``i`` (or ``indices[i]``).
    hook_points : str | int | sequence
        See :mod:`saeprobe.hooks` (``"final_norm"``, ``"resid_post.L"``, ``L``, ...).
    batch_size : int
        Items per forward pass.
    pools : sequence of str
        Poolings to compute (see :data:`saeprobe.pooling.POOLS`; ``"native"`` for dual encoders).
    tokens : bool
        Keep per-token activations (False: pooled only, cheaper).
    skip_system : bool
        Drop SYSTEM tokens from the per-token output (the paper masks them for SAE training).
    start : int
        Resume: output only samples with index >= ``start``.
    want : callable, optional
        Output only samples with ``want(index)`` true (with ``start``: both must hold).
        Batches without a wanted sample are not run. Batch boundaries stay those of a run
        over every item, so outputs are bit-identical to an uninterrupted run.
    tower : str | None
        Dual encoders: capture only this tower's items (others are skipped).
    bridge : TransformerBridge | None
        Run this TransformerLens bridge (wrapping ``adapter.model``) instead of the adapter;
        hook points may then be bridge names such as ``blocks.3.hook_out``.
    dtype : torch.dtype | None
        Cast per-token activations (default: the model's dtype).
    stop_early : bool
        Stop each forward pass after the deepest hook point.
    indices : iterable of int | None
        Sample index of each item (default ``0, 1, 2, ...``), e.g. for a rank's share.
    """
    pools = _check_args(adapter, pools, batch_size, tower)
    target = bridge if bridge is not None else adapter
    dual = getattr(adapter, "is_dual_encoder", False)
    points_by_tower: dict[Any, list[HookPoint]] = {}

    def wanted(i: int) -> bool:
        return i >= start and (want is None or want(i))

    pairs = zip(indices if indices is not None else itertools.count(), items, strict=False)
    if dual:
        pairs = ((i, item) for i, item in pairs if tower is None or adapter.tower_of(item) == tower)
    key = adapter.tower_of if dual else (lambda item: None)
    for chunk in _batched(pairs, batch_size, key):
        fresh = torch.tensor([wanted(i) for i, _ in chunk])
        if not bool(fresh.any()):
            continue
        all_index = torch.tensor([i for i, _ in chunk], dtype=torch.long)
        batch_items = [item for _, item in chunk]
        t = key(batch_items[0])
        if t not in points_by_tower:
            points_by_tower[t] = resolve_points(target, hook_points, t)
        batch, hidden, pooled = _run_batch(
            adapter, target, batch_items, t, points_by_tower[t], pools, tokens, stop_early
        )
        mask = batch.attention_mask.bool()
        keep = mask & (batch.modality != Modality.SYSTEM) if skip_system else mask
        if not bool(fresh.all()):  # the batch holding a resume point: drop the stored samples
            keep = keep & fresh.to(mask.device)[:, None]
            pooled = {h: {p: v[fresh] for p, v in ps.items()} for h, ps in pooled.items()}
        kept_items = [it for it, f in zip(batch_items, fresh.tolist(), strict=True) if f]
        yield CaptureBatch(
            **_tokens_of(batch, hidden, keep if tokens else None, all_index, dtype),
            pooled=pooled,
            sample_index=all_index[fresh],
            item_ids=[item.id for item in kept_items],
            tower=t,
        )
