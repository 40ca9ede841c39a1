"""Capture residual-stream activations of an MLLM with per-token labels.

:func:`iter_captures` streams :class:`CaptureBatch` objects (per-token activations
of the attended tokens plus pooled embeddings); :func:`capture` collects them in
memory or writes them to an activation store (resumable, one store per hook
point, one set of shards per rank).
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ._types import Item, Modality
from .hooks import HookPoint, is_bridge, parse_hook_points, run_with_hooks
from .pooling import NATIVE, POOLS, check_pools

logger = logging.getLogger(__name__)


@dataclass
class CaptureBatch:
    """Activations of one model batch.

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
        ``pooled[hook][pool]`` is ``[B, d]`` float32 (``pooled["native"]["native"]`` for a
        dual encoder's own embedding).
    sample_index : LongTensor [B]
        Data-order index of each item of the batch.
    item_ids : list[str]
    tower : str | None
    """

    acts: dict[str, torch.Tensor]
    sample_id: torch.Tensor
    position: torch.Tensor
    token_id: torch.Tensor
    modality: torch.Tensor
    pooled: dict[str, dict[str, torch.Tensor]]
    sample_index: torch.Tensor
    item_ids: list[str]
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
        n_layers = int(target.cfg.n_layers)
        return parse_hook_points(hook_points, n_layers, allow_tl=True)
    n_layers = len(target.layers(tower if tower is not None else target.towers[0]))
    return parse_hook_points(hook_points, n_layers)


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
        Resume: output only samples with index >= ``start``. Batch boundaries stay those
        of a run from 0, so the results are bit-identical to an uninterrupted run.
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
    pools = check_pools(pools)
    if NATIVE in pools and not getattr(adapter, "is_dual_encoder", False):
        raise ValueError(
            "'native' pooling needs a dual encoder (CLIP, SigLIP); use 'mean' for MLLMs"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    target = bridge if bridge is not None else adapter
    dual = getattr(adapter, "is_dual_encoder", False)
    if tower is not None and tower not in adapter.towers:
        raise ValueError(f"unknown tower {tower!r}; {type(adapter).__name__} has {adapter.towers}")
    points_by_tower: dict[Any, list[HookPoint]] = {}

    def points_for(t):
        if t not in points_by_tower:
            points_by_tower[t] = resolve_points(target, hook_points, t)
        return points_by_tower[t]

    index_iter = indices if indices is not None else itertools.count()
    pairs = zip(index_iter, items, strict=False)
    if dual:
        pairs = ((i, item) for i, item in pairs if tower is None or adapter.tower_of(item) == tower)
    key = adapter.tower_of if dual else (lambda item: None)
    device = adapter.device
    for chunk in _batched(pairs, batch_size, key):
        # batches keep the boundaries of an uninterrupted run, so a resumed capture
        # recomputes the batch holding `start` in full (bit-identical padding and maths)
        # and drops its samples below `start` from the output
        if chunk[-1][0] < start:
            continue
        sample_index = all_index = torch.tensor([i for i, _ in chunk], dtype=torch.long)
        batch_items = [item for _, item in chunk]
        t = key(batch_items[0])
        points = points_for(t)
        batch = adapter.encode(batch_items, tower=t) if dual else adapter.encode(batch_items)
        batch = batch.to(device)
        need_hidden = tokens or any(p != NATIVE for p in pools)
        hidden = (
            run_with_hooks(target, batch, points, tower=t, stop_early=stop_early)
            if need_hidden
            else {}
        )
        mask = batch.attention_mask.bool()
        modality = batch.modality.to(torch.int8)
        pooled: dict[str, dict[str, torch.Tensor]] = {}
        for name, h in hidden.items():
            pooled[name] = {p: POOLS[p](h, mask, modality).cpu() for p in pools if p != NATIVE}
        if NATIVE in pools:
            with torch.inference_mode():
                pooled[NATIVE] = {NATIVE: adapter.embed(batch).float().cpu()}
        keep = mask & (modality != Modality.SYSTEM) if skip_system else mask
        if chunk[0][0] < start:
            fresh = sample_index >= start
            keep = keep & fresh.to(mask.device)[:, None]
            pooled = {h: {p: v[fresh] for p, v in ps.items()} for h, ps in pooled.items()}
            sample_index = sample_index[fresh]
            batch_items = [it for it, f in zip(batch_items, fresh.tolist(), strict=True) if f]
        if tokens:
            positions = (mask.long().cumsum(1) - 1).to(torch.int32)
            rows = torch.arange(mask.shape[0], device=mask.device)[:, None].expand_as(mask)
            acts = {
                name: (h[keep] if dtype is None else h[keep].to(dtype)).cpu()
                for name, h in hidden.items()
            }
            out = CaptureBatch(
                acts=acts,
                sample_id=all_index.to(mask.device)[rows[keep]].cpu(),
                position=positions[keep].cpu(),
                token_id=batch.input_ids[keep].long().cpu(),
                modality=modality[keep].cpu(),
                pooled=pooled,
                sample_index=sample_index,
                item_ids=[item.id for item in batch_items],
                tower=t,
            )
        else:
            empty = torch.empty(0, dtype=torch.long)
            out = CaptureBatch(
                acts={},
                sample_id=empty,
                position=empty.to(torch.int32),
                token_id=empty,
                modality=empty.to(torch.int8),
                pooled=pooled,
                sample_index=sample_index,
                item_ids=[item.id for item in batch_items],
                tower=t,
            )
        yield out


@dataclass
class CaptureResult:
    """What :func:`capture` collected (in memory) or wrote (to a store).

    Attributes
    ----------
    acts : dict[str, Tensor]
        ``[n_tokens, d]`` per hook point (empty when written to a store).
    sample_id, position, token_id, modality : Tensor [n_tokens]
        Token labels (empty when written to a store).
    pooled : dict[str, dict[str, Tensor]]
        ``[n_items, d]`` per hook point and pooling, rows in :attr:`sample_index` order.
    sample_index : LongTensor [n_items]
    item_ids : list[str]
    n_tokens, n_items : int
    seconds : float
    modality_counts : dict[str, int]
    bytes_written : int
    out : str | None
    """

    acts: dict[str, torch.Tensor]
    sample_id: torch.Tensor
    position: torch.Tensor
    token_id: torch.Tensor
    modality: torch.Tensor
    pooled: dict[str, dict[str, torch.Tensor]]
    sample_index: torch.Tensor
    item_ids: list[str]
    n_tokens: int = 0
    n_items: int = 0
    seconds: float = 0.0
    modality_counts: dict[str, int] = field(default_factory=dict)
    bytes_written: int = 0
    out: str | None = None
    resumed_from: int = 0

    @property
    def tokens_per_s(self) -> float:
        return self.n_tokens / self.seconds if self.seconds > 0 else float("nan")

    def summary(self) -> str:
        counts = ", ".join(f"{k}={v:,}" for k, v in self.modality_counts.items())
        size = f", {self.bytes_written / 2**20:.1f} MiB written" if self.bytes_written else ""
        return (
            f"{self.n_items:,} items, {self.n_tokens:,} tokens in {self.seconds:.1f} s "
            f"({self.tokens_per_s:,.0f} tokens/s); modality: {counts}{size}"
        )


def _modality_counts(modality: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(modality.long().clamp_min(0), minlength=len(Modality))
    return {m.name.lower(): int(counts[int(m)]) for m in Modality}


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
    from .models.base import resolve_dtype

    dtype = resolve_dtype(dtype) if isinstance(dtype, str) else dtype
    if limit is not None:
        items = itertools.islice(items, limit)
        total = min(total, limit) if total is not None else limit
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    if out is not None:
        from .capture_store import capture_to_store

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
    return _merge(parts, time.perf_counter() - t0)


def _merge(parts: list[CaptureBatch], seconds: float) -> CaptureResult:
    def cat(tensors, dtype):
        return torch.cat(tensors) if tensors else torch.empty(0, dtype=dtype)

    names = list(parts[0].acts) if parts else []
    pooled_names = {h: list(p) for h, p in parts[0].pooled.items()} if parts else {}
    modality = cat([p.modality for p in parts], torch.int8)
    return CaptureResult(
        acts={n: torch.cat([p.acts[n] for p in parts]) for n in names},
        sample_id=cat([p.sample_id for p in parts], torch.long),
        position=cat([p.position for p in parts], torch.int32),
        token_id=cat([p.token_id for p in parts], torch.long),
        modality=modality,
        pooled={
            h: {k: torch.cat([p.pooled[h][k] for p in parts]) for k in ks}
            for h, ks in pooled_names.items()
        },
        sample_index=cat([p.sample_index for p in parts], torch.long),
        item_ids=[i for p in parts for i in p.item_ids],
        n_tokens=int(modality.numel()),
        n_items=sum(len(p.item_ids) for p in parts),
        seconds=seconds,
        modality_counts=_modality_counts(modality),
    )
