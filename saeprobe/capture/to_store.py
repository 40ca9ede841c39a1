"""Capture into activation stores: resumable and self-repairing, one store per hook point,
ranks in parallel.

Layout of ``out`` (a single hook point writes its store directly into ``out``)::

    out/<hook point>/manifest.json, shard-r000-000000.safetensors, ...
    out/pooled.safetensors + pooled.json      pooled embeddings of every item (after the last rank)

Pooled rows travel inside the shards (one row per sample), so a resumed or repaired capture
still has exactly one pooled row per item. Samples are distributed round-robin over ranks
(sample ``i`` goes to rank ``i % world``); indices are global, so the ranks' shards form one
store.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._types import Item, Modality
from ..distributed import barrier, dist_info
from ..hooks import is_bridge
from ..pooling import NATIVE
from ..store import (
    ActivationStore,
    ActivationStoreWriter,
    canonical_spec,
    fingerprint_fields,
    fingerprint_of,
    merge_manifests,
    merge_pooled,
)
from .result import CaptureResult
from .stream import CaptureBatch, iter_captures, resolve_points

logger = logging.getLogger(__name__)

__all__ = ["capture_to_store", "store_dirs"]


def store_dirs(out: str | os.PathLike, point_names: Sequence[str]) -> dict[str, Path]:
    """Store folder of each hook point under ``out``."""
    out = Path(out)
    if len(point_names) == 1:
        return {point_names[0]: out}
    return {name: out / name for name in point_names}


def _rank_share(items, rank: int, world: int, start: int, batch_size: int, adapter):
    """This rank's items (sample ``i`` goes to rank ``i % world``) and the global index of
    the first one.

    Random-access sources (``item(i)`` + ``n_total``) start at the batch boundary that holds
    ``start`` without reading (or decoding) the items before it; batch boundaries are those
    of a run from sample 0, so a resumed capture is bit-identical.
    """
    random_access = (
        callable(getattr(items, "item", None))
        and hasattr(items, "n_total")
        and getattr(items, "world_size", 1) == 1
        and not getattr(adapter, "is_dual_encoder", False)  # tower grouping shifts batches
    )
    if random_access and start > rank:
        local = (start - rank + world - 1) // world  # rank-local position of `start`
        first = rank + world * ((local // batch_size) * batch_size)
        return (items.item(i) for i in range(first, items.n_total, world)), first
    return (it for i, it in enumerate(items) if i % world == rank), rank


def _fingerprint(adapter, items, spec, total, model_name, pools, skip_system, tower, world):
    settings = {
        "model": canonical_spec(model_name or adapter.name_or_path),
        "adapter": type(adapter).__name__,
        "pools": list(pools),
        "skip_system": skip_system,
        "tower": tower,
        "world_size": world,
    }
    ids_fn = getattr(items, "item_ids", None)
    fields = fingerprint_fields(
        {"data": spec, "total": total}, ids_fn() if callable(ids_fn) else [], settings
    )
    return settings, fields, fingerprint_of(fields)


def _pooled_for(cb: CaptureBatch, name: str) -> dict[str, torch.Tensor]:
    rows = dict(cb.pooled.get(name, {}))
    if NATIVE in cb.pooled:
        rows[NATIVE] = cb.pooled[NATIVE][NATIVE]
    return rows


def _check_tokens(cb: CaptureBatch) -> None:
    """Every item of a batch must keep at least one token (its pooled row rides with it)."""
    present = torch.unique(cb.sample_id)
    if present.numel() != cb.sample_index.numel():
        lost = sorted(set(cb.sample_index.tolist()) - set(present.tolist()))
        names = [cb.item_ids[cb.sample_index.tolist().index(i)] for i in lost[:3]]
        raise ValueError(
            f"items {names} have no token left to store (only system-prompt tokens with "
            "--skip-system?); drop them from the data or capture without --skip-system"
        )


def capture_to_store(
    adapter: Any,
    items: Iterable[Item],
    hook_points: Any,
    *,
    out: str | os.PathLike,
    batch_size: int = 8,
    pools: Sequence[str] = ("mean",),
    skip_system: bool = False,
    tower: str | None = None,
    bridge: Any = None,
    dtype: torch.dtype | None = None,
    progress: bool = True,
    total: int | None = None,
    resume: bool = True,
    shard_tokens: int | None = None,
    data_spec: Any = None,
    model_name: str | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> CaptureResult:
    """Capture ``items`` into activation stores under ``out`` (see :func:`saeprobe.capture.capture`)."""
    info = dist_info()
    rank = info.rank if rank is None else rank
    world = info.world_size if world_size is None else world_size
    out = Path(out)
    target = bridge if bridge is not None else adapter
    points = resolve_points(target, hook_points, tower)
    dirs = store_dirs(out, [p.name for p in points])
    store_dtype = dtype or adapter.dtype
    spec = canonical_spec(
        data_spec if data_spec is not None else getattr(items, "spec", repr(type(items)))
    )
    settings, fields, fp = _fingerprint(
        adapter, items, spec, total, model_name, pools, skip_system, tower, world
    )
    d = int(target.cfg.d_model) if is_bridge(target) else adapter.d_model_of(tower)
    writers = {
        p.name: ActivationStoreWriter(
            dirs[p.name],
            d=d,
            dtype=store_dtype,
            metadata={**settings, "hook_point": p.name, "layer": p.layer, "data": spec},
            fingerprint=fp,
            fingerprint_fields=fields,
            shard_tokens=shard_tokens,
            rank=rank,
            world_size=world,
            resume=resume,
        )
        for p in points
    }
    start = min(r[0] for w in writers.values() for r in w.wanted_ranges)
    if start > 0:
        logger.info("resuming capture into %s at sample %d", out, start)
    if all(w.finished for w in writers.values()):
        logger.info("store %s is already complete", out)
        rank_items, first = (), rank
    else:
        rank_items, first = _rank_share(items, rank, world, start, batch_size, adapter)
    t0 = time.perf_counter()
    stream = iter_captures(
        adapter,
        rank_items,
        list(dirs),
        batch_size=batch_size,
        pools=pools,
        skip_system=skip_system,
        want=lambda i: any(w.needs(i) for w in writers.values()),
        tower=tower,
        bridge=bridge,
        dtype=store_dtype,
        indices=range(first, 2**62, world),
    )
    share = None if total is None else max(0, (total - rank + world - 1) // world)
    n_tokens, n_items, counts = _write_all(stream, writers, share, rank, world, progress)
    return _finish(out, dirs, writers, rank, world, n_tokens, n_items, counts, start, t0)


def _write_all(stream, writers, share, rank, world, progress) -> tuple[int, int, torch.Tensor]:
    """Feed every captured batch to the writers (with a progress bar); close them."""
    from tqdm.auto import tqdm

    n_tokens, n_items = 0, 0
    counts = torch.zeros(len(Modality), dtype=torch.long)
    desc = f"capture r{rank}" if world > 1 else "capture"
    with tqdm(total=share, unit="item", desc=desc, disable=not progress) as bar:
        for cb in stream:
            _check_tokens(cb)
            for name, writer in writers.items():
                writer.add(
                    cb.acts[name], cb.sample_id, cb.position, cb.token_id, cb.modality,
                    pooled=_pooled_for(cb, name), item_ids=cb.item_ids,
                )  # fmt: skip
            n_tokens += cb.n_tokens
            n_items += len(cb.item_ids)
            counts += torch.bincount(cb.modality.long().clamp_min(0), minlength=len(Modality))
            bar.update(len(cb.item_ids))
            bar.set_postfix(tokens=n_tokens, refresh=False)
    for writer in writers.values():
        writer.close()
    return n_tokens, n_items, counts


def _finish(out, dirs, writers, rank, world, n_tokens, n_items, counts, start, t0) -> CaptureResult:
    """After every rank: merge the manifests and the pooled rows (rank 0); the result."""
    seconds = time.perf_counter() - t0
    barrier()
    if rank == 0:
        if world > 1:
            for path in dirs.values():
                merge_manifests(path)
        merge_pooled(out, dirs)
    written = sum(
        int(s.get("bytes", 0))
        for path in dirs.values()
        for s in ActivationStore(path, allow_incomplete=True, verify=False).shards
        if int(s.get("rank", rank)) == rank
    )
    empty = torch.empty(0, dtype=torch.long)
    return CaptureResult(
        acts={},
        sample_id=empty,
        position=empty.to(torch.int32),
        token_id=empty,
        modality=empty.to(torch.int8),
        pooled={},
        sample_index=empty,
        item_ids=[],
        n_tokens=n_tokens,
        n_items=n_items,
        seconds=seconds,
        modality_counts={m.name.lower(): int(counts[int(m)]) for m in Modality},
        bytes_written=written,
        out=str(out),
        resumed_from=start,
        stores={k: str(v) for k, v in dirs.items()},
    )
