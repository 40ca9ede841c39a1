"""Capture into activation stores: resumable, one store per hook point, ranks in parallel.

Layout of ``out`` (a single hook point writes its store directly into ``out``)::

    out/<hook point>/manifest.json, shard-r000-000000.safetensors, ...
    out/pooled/part-r000-000000.safetensors     pooled embeddings, written as shards complete
    out/pooled.safetensors + pooled.json        merged pooled embeddings (after the last rank)

Samples are distributed round-robin over ranks (sample ``i`` goes to rank ``i % world``);
sample indices are global, so the stores of all ranks form one store.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ._types import Item, Modality
from .capture import CaptureResult, iter_captures, resolve_points
from .distributed import barrier, dist_info
from .hooks import is_bridge
from .store import ActivationStore, ActivationStoreWriter, data_fingerprint, merge_manifests

logger = logging.getLogger(__name__)

POOLED_DIR = "pooled"
POOLED_FILE = "pooled.safetensors"


def store_dirs(out: str | os.PathLike, point_names: Sequence[str]) -> dict[str, Path]:
    """Store folder of each hook point under ``out``."""
    out = Path(out)
    if len(point_names) == 1:
        return {point_names[0]: out}
    return {name: out / name for name in point_names}


def _atomic_save(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict | None = None
) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


class _PooledWriter:
    """Pooled embeddings of complete samples, flushed in parts next to the stores."""

    def __init__(self, out: Path, rank: int):
        self.dir = out / POOLED_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        self.rank = rank
        self.rows: list[tuple[int, str, dict[str, torch.Tensor]]] = []
        self.parts = sorted(self.dir.glob(f"part-r{rank:03d}-*.safetensors"))

    def next_sample(self) -> int:
        """1 + the last sample index already written by this rank (0: nothing yet)."""
        if not self.parts:
            return 0
        last = load_file(str(self.parts[-1]))["sample_index"]
        return int(last.max()) + 1

    def add(self, sample_index: torch.Tensor, item_ids: list[str], pooled: dict) -> None:
        for row, (index, item_id) in enumerate(zip(sample_index.tolist(), item_ids, strict=True)):
            values = {f"{h}.{p}": t[row] for h, ps in pooled.items() for p, t in ps.items()}
            self.rows.append((index, item_id, values))

    def flush(self, below: int | None = None) -> None:
        """Write rows whose sample index is below ``below`` (all rows if None)."""
        ready = [r for r in self.rows if below is None or r[0] < below]
        if not ready:
            return
        self.rows = [r for r in self.rows if not (below is None or r[0] < below)]
        tensors = {"sample_index": torch.tensor([r[0] for r in ready], dtype=torch.long)}
        for key in ready[0][2]:
            tensors[key] = torch.stack([r[2][key] for r in ready])
        path = self.dir / f"part-r{self.rank:03d}-{len(self.parts):06d}.safetensors"
        _atomic_save(tensors, path, {"item_ids": json.dumps([r[1] for r in ready])})
        self.parts.append(path)


def merge_pooled(out: str | os.PathLike) -> dict[str, torch.Tensor] | None:
    """Merge every rank's pooled parts into ``pooled.safetensors`` (rows by sample index)."""
    out = Path(out)
    parts = sorted((out / POOLED_DIR).glob("part-r*.safetensors"))
    if not parts:
        return None
    from safetensors import safe_open

    chunks, ids = [], []
    for part in parts:
        with safe_open(str(part), "pt") as f:
            ids.extend(json.loads(f.metadata()["item_ids"]))
        chunks.append(load_file(str(part)))
    merged = {k: torch.cat([c[k] for c in chunks]) for k in chunks[0]}
    order = torch.argsort(merged["sample_index"])
    merged = {k: v[order] for k, v in merged.items()}
    ids = [ids[i] for i in order.tolist()]
    _atomic_save(merged, out / POOLED_FILE)
    tmp = out / ".pooled.json.tmp"
    tmp.write_text(json.dumps({"item_ids": ids, "keys": sorted(merged)}), encoding="utf-8")
    os.replace(tmp, out / "pooled.json")
    return merged


def load_pooled(out: str | os.PathLike) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read merged pooled embeddings: ``({"<hook>.<pool>": [N, d], "sample_index": [N]}, item_ids)``."""
    out = Path(out)
    path = out / POOLED_FILE
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: the capture did not store pooled embeddings or has not finished"
        )
    meta = json.loads((out / "pooled.json").read_text(encoding="utf-8"))
    return load_file(str(path)), meta["item_ids"]


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
    from tqdm.auto import tqdm

    info = dist_info()
    rank = info.rank if rank is None else rank
    world = info.world_size if world_size is None else world_size
    out = Path(out)
    target = bridge if bridge is not None else adapter
    points = resolve_points(target, hook_points, tower)
    names = [p.name for p in points]
    dirs = store_dirs(out, names)
    d = int(target.cfg.d_model) if is_bridge(target) else adapter.d_model_of(tower)
    store_dtype = dtype or adapter.dtype
    settings = {
        "model": model_name or adapter.name_or_path,
        "adapter": type(adapter).__name__,
        "pools": list(pools),
        "skip_system": skip_system,
        "tower": tower,
        "world_size": world,
    }
    ids_fn = getattr(items, "item_ids", None)
    item_ids = ids_fn() if callable(ids_fn) else []
    spec = data_spec if data_spec is not None else getattr(items, "spec", repr(type(items)))
    fingerprint = data_fingerprint({"data": spec, "total": total}, item_ids, settings)
    writers = {
        name: ActivationStoreWriter(
            dirs[name],
            d=d,
            dtype=store_dtype,
            metadata={**settings, "hook_point": name, "layer": p.layer, "data": spec},
            fingerprint=fingerprint,
            shard_tokens=shard_tokens,
            rank=rank,
            world_size=world,
            resume=resume,
        )
        for name, p in zip(names, points, strict=True)
    }
    pooled = _PooledWriter(out, rank)
    # pooled parts are flushed after the shards they belong to, so they may lag behind
    start = min(min(w.next_sample for w in writers.values()), pooled.next_sample())
    if start > 0:
        logger.info("resuming capture into %s at sample %d", out, start)

    if all(w.finished for w in writers.values()):
        logger.info("store %s is already complete", out)
        rank_items: Iterable[Item] = ()
        first = rank
    else:
        rank_items, first = _rank_share(items, rank, world, start, batch_size, adapter)
    share = None if total is None else max(0, (total - rank + world - 1) // world)
    t0 = time.perf_counter()
    n_tokens, n_items = 0, 0
    counts = torch.zeros(len(Modality), dtype=torch.long)
    bar = tqdm(
        total=share,
        unit="item",
        desc=f"capture r{rank}" if world > 1 else "capture",
        disable=not progress,
    )
    bar.update(len(range(rank, start, world)))
    for cb in iter_captures(
        adapter,
        rank_items,
        names,
        batch_size=batch_size,
        pools=pools,
        skip_system=skip_system,
        start=start,
        tower=tower,
        bridge=bridge,
        dtype=store_dtype,
        indices=range(first, 2**62, world),
    ):
        for name, writer in writers.items():
            writer.add(cb.acts[name], cb.sample_id, cb.position, cb.token_id, cb.modality)
        pooled.add(cb.sample_index, cb.item_ids, cb.pooled)
        pooled.flush(below=min(w.next_sample for w in writers.values()))
        n_tokens += cb.n_tokens
        n_items += len(cb.item_ids)
        counts += torch.bincount(cb.modality.long().clamp_min(0), minlength=len(Modality))
        bar.update(len(cb.item_ids))
        bar.set_postfix(tokens=n_tokens, refresh=False)
    bar.close()
    for writer in writers.values():
        writer.close()
    pooled.flush()
    seconds = time.perf_counter() - t0
    barrier()
    if rank == 0:
        if world > 1:
            for path in dirs.values():
                merge_manifests(path)
        merge_pooled(out)
    bytes_written = sum(
        int(s.get("bytes", 0))
        for path in dirs.values()
        for s in ActivationStore(path, allow_incomplete=True).shards
        if int(s.get("rank", rank)) == rank
    )
    result = CaptureResult(
        acts={},
        sample_id=torch.empty(0, dtype=torch.long),
        position=torch.empty(0, dtype=torch.int32),
        token_id=torch.empty(0, dtype=torch.long),
        modality=torch.empty(0, dtype=torch.int8),
        pooled={},
        sample_index=torch.empty(0, dtype=torch.long),
        item_ids=[],
        n_tokens=n_tokens,
        n_items=n_items,
        seconds=seconds,
        modality_counts={m.name.lower(): int(counts[int(m)]) for m in Modality},
        bytes_written=bytes_written,
        out=str(out),
        resumed_from=start,
    )
    return result
