"""Embedding the two sides of a retrieval task through a model adapter (cached, ranks in
parallel)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .._types import Item
from ..atomic import atomic_save_safetensors
from ..capture import iter_captures, resolve_points
from ..distributed import barrier, dist_info, shard_indices
from .cache import EmbeddingCache, model_fingerprint, side_fingerprint
from .config import NATIVE

logger = logging.getLogger(__name__)

__all__ = ["embed_items", "task_embeddings", "validate_embeddings"]


def _split_for_dual(item: Item) -> list[Item]:
    if item.image is not None and item.text:
        return [
            Item(id=item.id + "#image", image=item.image, meta=item.meta),
            Item(id=item.id + "#text", text=item.text, meta=item.meta),
        ]
    return [item]


def _blocks(items: Iterator[Item], size: int) -> Iterator[list[Item]]:
    block: list[Item] = []
    for it in items:
        block.append(it)
        if len(block) >= size:
            yield block
            block = []
    if block:
        yield block


def embed_items(
    adapter: Any,
    items: Iterator[Item] | Sequence[Item],
    n: int,
    *,
    layers: Sequence[str] = ("final_norm",),
    pool: str | None = None,
    batch_size: int = 8,
    desc: str = "embedding",
) -> dict[str, torch.Tensor]:
    """Embed ``n`` items; returns ``{layer name: FloatTensor [n, d]}`` (not normalised,
    except dual-encoder image+text fusion which is a normalised sum).

    Dual encoders with pool ``native`` give ``{"native": [n, D]}``.
    """
    from tqdm.auto import tqdm

    dual = bool(getattr(adapter, "is_dual_encoder", False))
    pool = pool or (NATIVE if dual else "mean")
    if pool == NATIVE and not dual:
        raise ValueError("pool 'native' needs a dual encoder (CLIP, SigLIP); use 'mean' for MLLMs")
    if pool == NATIVE:
        names = [NATIVE]
        hooks: list[str] = ["final_norm"]
    else:
        tower0 = adapter.towers[0]
        names = [p.name for p in resolve_points(adapter, list(layers), tower0)]
        hooks = list(layers)
    out: dict[str, list[torch.Tensor]] = {nm: [] for nm in names}
    done = 0
    bar = tqdm(total=n, desc=desc, unit="item", disable=n < 2 * batch_size)
    block_size = max(batch_size * 16, 64)
    for block in _blocks(iter(items), block_size):
        if dual:
            flat: list[Item] = []
            owner: list[int] = []
            for bi, it in enumerate(block):
                for part in _split_for_dual(it):
                    flat.append(part)
                    owner.append(bi)
            # group by tower (captures batch consecutive items of one tower)
            order = sorted(range(len(flat)), key=lambda i: adapter.tower_of(flat[i]))
        else:
            flat, owner, order = block, list(range(len(block))), list(range(len(block)))
        got: dict[str, list[torch.Tensor | None]] = {nm: [None] * len(flat) for nm in names}
        for cb in iter_captures(
            adapter,
            [flat[i] for i in order],
            hook_points=hooks,
            pools=(pool,),
            batch_size=batch_size,
            tokens=False,
        ):
            for nm in names:
                key = NATIVE if pool == NATIVE else nm
                vals = cb.pooled[key][pool]
                for r, si in enumerate(cb.sample_index.tolist()):
                    got[nm][order[si]] = vals[r].float()
        for nm in names:
            rows = got[nm]
            if any(r is None for r in rows):
                raise RuntimeError("capture returned fewer embeddings than items")
            if dual and len(flat) != len(block):
                fused: list[torch.Tensor | None] = [None] * len(block)
                for r, bi in zip(rows, owner):
                    v = F.normalize(r, dim=0)
                    fused[bi] = v if fused[bi] is None else fused[bi] + v
                rows = [F.normalize(v, dim=0) for v in fused]
            out[nm].append(torch.stack(rows))
        done += len(block)
        bar.update(len(block))
    bar.close()
    if done != n:
        raise RuntimeError(f"expected {n} items, got {done}")
    return {nm: torch.cat(v) if v else torch.empty(0) for nm, v in out.items()}


def validate_embeddings(emb: torch.Tensor, ids: Sequence[str], side: str) -> torch.Tensor:
    """Check for NaN/inf rows (error naming them) and zero rows (warning); return
    the L2-normalised float32 embeddings."""
    emb = emb.float()
    bad = ~torch.isfinite(emb).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        names = ", ".join(repr(ids[i]) for i in rows[:5])
        raise ValueError(
            f"{len(rows)} {side} embeddings contain NaN/inf (e.g. {names}): the model overflowed "
            "or an item had no token to pool; use dtype bf16/fp32, another pooling, or drop them"
        )
    norms = emb.norm(dim=1)
    zero = norms == 0
    if zero.any():
        logger.warning(
            "%d %s embeddings are zero vectors (e.g. %r): they score 0 against everything",
            int(zero.sum()),
            side,
            ids[int(zero.nonzero()[0])],
        )
    return F.normalize(emb, dim=1)


def task_embeddings(
    adapter: Any,
    task: Any,
    *,
    layers: Sequence[str] = ("final_norm",),
    pool: str | None = None,
    batch_size: int = 8,
    cache: EmbeddingCache | None = None,
    rank: int | None = None,
    world_size: int | None = None,
) -> dict[str, dict[str, torch.Tensor]] | None:
    """Embed (or load from cache) both sides of an M-BEIR task.

    With several ranks, each rank embeds a contiguous share of every side and
    writes it to the cache folder; rank 0 gathers the parts (after a barrier)
    and returns the full embeddings, other ranks return ``None``.

    Returns
    -------
    ``{"query": {layer: [Q, d]}, "corpus": {layer: [N, d]}}`` (raw, float32) on rank 0.
    """
    cache = cache or EmbeddingCache(None)
    info = dist_info()
    rank = info.rank if rank is None else rank
    world_size = info.world_size if world_size is None else world_size
    dual = bool(getattr(adapter, "is_dual_encoder", False))
    pool = pool or (NATIVE if dual else "mean")
    if world_size > 1 and cache.root is None:
        raise ValueError("multi-rank embedding gathers through the cache folder: pass --cache DIR")
    mfp = model_fingerprint(adapter)
    result: dict[str, dict[str, torch.Tensor]] = {}
    for side_name, side in (("query", task.queries), ("corpus", task.corpus)):
        dfp = side_fingerprint(side.files, side.ids, side.kind, side.prompt)
        names = [NATIVE] if pool == NATIVE else _layer_names(adapter, layers)
        keys = {nm: cache.key(mfp, dfp, pool, nm) for nm in names}
        have = {nm: cache.load(keys[nm], side_name, len(side)) for nm in names}
        if all(v is not None for v in have.values()):
            result[side_name] = have
            continue
        share = shard_indices(len(side), rank, world_size)
        start, stop = share.start, share.stop
        t0 = time.perf_counter()
        part = embed_items(
            adapter,
            side.items(start, stop),
            stop - start,
            layers=layers,
            pool=pool,
            batch_size=batch_size,
            desc=f"{side_name} (rank {rank})" if world_size > 1 else side_name,
        )
        logger.info(
            "%s: embedded %d items in %.1f s", side_name, stop - start, time.perf_counter() - t0
        )
        if world_size > 1:
            for nm, emb in part.items():
                atomic_save_safetensors(
                    cache.root / f"{side_name}-{keys[nm]}.part{rank}of{world_size}.safetensors",
                    {"embeddings": emb},
                    {"start": str(start), "stop": str(stop)},
                    what="embedding part",
                )
            barrier()
            if rank != 0:
                continue
            part = {nm: _gather_parts(cache.root, side_name, keys[nm], world_size) for nm in names}
        for nm, emb in part.items():
            cache.save(
                keys[nm],
                side_name,
                emb,
                {
                    "model": mfp["model"],
                    "pool": pool,
                    "layer": nm,
                    "n": len(side),
                    "side": side_name,
                },
            )
        result[side_name] = part
    if rank != 0:
        return None
    return result


def _layer_names(adapter: Any, layers: Sequence[str]) -> list[str]:
    return [p.name for p in resolve_points(adapter, list(layers), adapter.towers[0])]


def _gather_parts(root: Path, side: str, key: str, world: int) -> torch.Tensor:
    from safetensors.torch import load_file

    parts = []
    for r in range(world):
        p = root / f"{side}-{key}.part{r}of{world}.safetensors"
        if not p.exists():
            raise FileNotFoundError(
                f"embedding part {p.name} of rank {r} is missing: that rank failed or the "
                "cache folder is not shared between ranks"
            )
        parts.append(load_file(str(p))["embeddings"])
    emb = torch.cat(parts)
    for r in range(world):
        (root / f"{side}-{key}.part{r}of{world}.safetensors").unlink(missing_ok=True)
    return emb
