"""Zero-shot retrieval evaluation on M-BEIR task folders, with whitening.

Pipeline: embed the queries and the candidates of a task through a model
adapter (each side cached to safetensors as soon as it is done), then for each
whitening method whiten (:func:`saeprobe.whitening.whiten_pair`), search
exhaustively (:func:`saeprobe.ranking.topk_search`) and score Recall@k (the
paper's definition), MRR and nDCG@10.

Embeddings
----------
MLLMs: the paper's mean pooling (over all attended tokens) of the ``final_norm``
hook point (HF ``hidden_states[-1]``); any pooling of :mod:`saeprobe.pooling` and
any hook point can be chosen. Dual encoders (CLIP, SigLIP): the model's own
projected embedding (pool ``native``), as in the paper's baselines; an
image+text item is embedded by both towers and fused as
``normalize(normalize(e_image) + normalize(e_text))`` (UniIR's score-level
fusion by sum, expressed on the embedding: its dot product with a candidate is
the sum of the two cosine scores, up to the final normalisation).

Every embedding is L2-normalised before whitening / scoring. The method
``none`` (reported as ``base``) is the raw normalised embedding.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ._types import Item
from .ranking import ranking_metrics, topk_search
from .whitening import STATS_MODES, canonical_method, whiten_pair

logger = logging.getLogger(__name__)

NATIVE = "native"
DEFAULT_CACHE = (
    Path(os.environ.get("SAEPROBE_CACHE", Path.home() / ".cache" / "saeprobe")) / "retrieval"
)

__all__ = [
    "EmbeddingCache",
    "RetrievalConfig",
    "RetrievalResult",
    "embed_items",
    "evaluate",
    "format_table",
    "method_label",
    "score_methods",
    "task_embeddings",
    "validate_embeddings",
]


@dataclass
class RetrievalConfig:
    """Settings of a retrieval evaluation (round-trips to JSON).

    Attributes
    ----------
    methods : list[str]
        Whitening methods compared (``none`` = base, ``realign``, ``zca``,
        ``pca``, ``ledoit_wolf``, ``oas``, ``abtt``).
    alpha, eps : float
        ReAlign shrinkage and eigenvalue floor.
    stats : str
        Statistics mode (see :func:`saeprobe.whitening.whiten_pair`).
    pool : str | None
        Pooling (default: ``mean`` for MLLMs, ``native`` for dual encoders).
    layer : str
        Hook point (``final_norm``, ``resid_post.L``).
    batch_size : int
    ks : list[int]
        Recall cut-offs.
    ndcg_k : int
    depth : int
        Neighbours retrieved per query (MRR is computed within them).
    device : str | None
        Device for whitening and search (default: cuda when available).
    chunk_size : int
        Candidate rows per search block.
    """

    methods: list[str] = field(default_factory=lambda: ["none", "realign"])
    alpha: float = 0.1
    eps: float = 1e-5
    stats: str = "separate"
    pool: str | None = None
    layer: str = "final_norm"
    batch_size: int = 8
    ks: list[int] = field(default_factory=lambda: [1, 5, 10])
    ndcg_k: int = 10
    depth: int = 100
    device: str | None = None
    chunk_size: int = 65536

    def __post_init__(self) -> None:
        self.methods = [canonical_method(m) for m in self.methods]
        if self.stats not in STATS_MODES:
            raise ValueError(f"unknown stats mode {self.stats!r}; choose one of {STATS_MODES}")
        if self.batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.ks = [int(k) for k in self.ks]
        self.depth = max(self.depth, max(self.ks), self.ndcg_k)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RetrievalConfig:
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in known})


def method_label(method: str) -> str:
    return "base" if method == "none" else method


# ------------------------------------------------------------------ cache
def _atomic_save(tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str]) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


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


def data_fingerprint(files: Sequence[Path], ids: Sequence[str], kind: str, prompt: str) -> dict:
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
        _atomic_save({"embeddings": emb.cpu()}, p, {k: str(v) for k, v in meta.items()})
        logger.info("cached %s embeddings %s to %s", side, tuple(emb.shape), p)
        return p


# ------------------------------------------------------------------ embedding
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

    from .capture import iter_captures, resolve_points

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


# ------------------------------------------------------------------ distributed helpers
def _dist() -> tuple[int, int]:
    try:
        from .distributed import dist_info

        info = dist_info()
        return info.rank, info.world_size
    except ImportError:  # pragma: no cover
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _barrier() -> None:
    try:
        from .distributed import barrier
    except ImportError:  # pragma: no cover
        return
    barrier()


def _shard(n: int, rank: int, world: int) -> tuple[int, int]:
    per, extra = divmod(n, world)
    start = rank * per + min(rank, extra)
    return start, start + per + (1 if rank < extra else 0)


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
    r0, w0 = _dist()
    rank = r0 if rank is None else rank
    world_size = w0 if world_size is None else world_size
    dual = bool(getattr(adapter, "is_dual_encoder", False))
    pool = pool or (NATIVE if dual else "mean")
    if world_size > 1 and cache.root is None:
        raise ValueError("multi-rank embedding gathers through the cache folder: pass --cache DIR")
    mfp = model_fingerprint(adapter)
    result: dict[str, dict[str, torch.Tensor]] = {}
    for side_name, side in (("query", task.queries), ("corpus", task.corpus)):
        dfp = data_fingerprint(side.files, side.ids, side.kind, side.prompt)
        names = [NATIVE] if pool == NATIVE else _layer_names(adapter, layers)
        keys = {nm: cache.key(mfp, dfp, pool, nm) for nm in names}
        have = {nm: cache.load(keys[nm], side_name, len(side)) for nm in names}
        if all(v is not None for v in have.values()):
            result[side_name] = have
            continue
        start, stop = _shard(len(side), rank, world_size)
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
                _atomic_save(
                    {"embeddings": emb},
                    cache.root / f"{side_name}-{keys[nm]}.part{rank}of{world_size}.safetensors",
                    {"start": str(start), "stop": str(stop)},
                )
            _barrier()
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
    from .capture import resolve_points

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


# ------------------------------------------------------------------ scoring
def _default_device(device: str | None) -> torch.device:
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def score_methods(
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: list,
    config: RetrievalConfig,
    *,
    methods: Sequence[str] | None = None,
    support: torch.Tensor | None = None,
    alpha: float | None = None,
) -> dict[str, dict[str, float]]:
    """Whiten with each method, search, and score.

    Parameters
    ----------
    queries : [Q, d], candidates : [N, d]
        L2-normalised embeddings.
    relevant : list
        Per query, the relevant candidate rows (sets, or dicts of gains).

    Returns
    -------
    ``{method label: {"R@1": ..., "MRR": ..., "nDCG@10": ..., "seconds": ...}}``
    """
    if queries.shape[1] != candidates.shape[1]:
        raise ValueError(
            f"query dim {queries.shape[1]} != candidate dim {candidates.shape[1]}: embed both "
            "sides with the same model, layer and pooling"
        )
    dev = _default_device(config.device)
    out: dict[str, dict[str, float]] = {}
    for method in methods or config.methods:
        t0 = time.perf_counter()
        kw: dict[str, Any] = {"eps": config.eps}
        if method == "realign":
            kw["alpha"] = config.alpha if alpha is None else alpha
        q, c = whiten_pair(
            queries.to(dev),
            candidates.to(dev),
            method,
            stats=config.stats,
            support=support,
            device=dev,
            **kw,
        )
        top = topk_search(q, c, config.depth, chunk_size=config.chunk_size, device=dev)
        m = ranking_metrics(
            top.indices.cpu(),
            relevant,
            ks=config.ks,
            ndcg_k=config.ndcg_k,
            complete=top.indices.shape[1] >= c.shape[0],
        )
        m["seconds"] = time.perf_counter() - t0
        out[method_label(method)] = m
    return out


@dataclass
class RetrievalResult:
    """Scores of one evaluation (``to_dict`` is the JSON written by the CLI)."""

    model: str
    data: str
    task: int
    n_queries: int
    n_corpus: int
    config: RetrievalConfig
    results: dict[str, dict[str, float]]
    timing: dict[str, float] = field(default_factory=dict)
    layer: str = "final_norm"
    pool: str = "mean"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "data": self.data,
            "task": self.task,
            "n_queries": self.n_queries,
            "n_corpus": self.n_corpus,
            "layer": self.layer,
            "pool": self.pool,
            "config": self.config.to_dict(),
            "results": self.results,
            "timing": self.timing,
        }


def evaluate(
    adapter: Any,
    task: Any,
    config: RetrievalConfig | None = None,
    *,
    cache: EmbeddingCache | str | os.PathLike | None = None,
    support: torch.Tensor | None = None,
) -> RetrievalResult | None:
    """Embed an M-BEIR task with ``adapter`` and score every whitening method.

    Returns None on ranks other than 0 (they only embed their share).
    """
    config = config or RetrievalConfig()
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    dual = bool(getattr(adapter, "is_dual_encoder", False))
    pool = config.pool or (NATIVE if dual else "mean")
    t0 = time.perf_counter()
    emb = task_embeddings(
        adapter, task, layers=[config.layer], pool=pool, batch_size=config.batch_size, cache=cache
    )
    if emb is None:
        return None
    t_embed = time.perf_counter() - t0
    (layer_name,) = emb["query"].keys()
    q = validate_embeddings(emb["query"][layer_name], task.queries.ids, "query")
    c = validate_embeddings(emb["corpus"][layer_name], task.corpus.ids, "candidate")
    relevant = task.relevant_rows(graded=task.gains is not None)
    t1 = time.perf_counter()
    results = score_methods(q, c, relevant, config, support=support)
    return RetrievalResult(
        model=str(getattr(adapter, "name_or_path", adapter)),
        data=str(task.path),
        task=task.task,
        n_queries=len(task.queries),
        n_corpus=len(task.corpus),
        config=config,
        results=results,
        timing={"embed_s": t_embed, "score_s": time.perf_counter() - t1},
        layer=layer_name,
        pool=pool,
    )


def format_table(results: dict[str, dict[str, float]], percent: bool = True) -> str:
    """A text table: method x Recall@k, MRR, nDCG (in % by default)."""
    metrics: list[str] = []
    for m in results.values():
        for k in m:
            if k != "seconds" and k not in metrics:
                metrics.append(k)
    width = max(8, *(len(n) for n in results)) if results else 8
    head = f"{'method':<{width}} " + " ".join(f"{k:>8}" for k in metrics)
    lines = [head, "-" * len(head)]
    for name, m in results.items():
        vals = []
        for k in metrics:
            v = m.get(k)
            vals.append(f"{'':>8}" if v is None else f"{(100 * v if percent else v):>8.2f}")
        lines.append(f"{name:<{width}} " + " ".join(vals))
    return "\n".join(lines)


def write_json(obj: Any, path: str | os.PathLike) -> Path:
    """Atomic JSON write."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=str)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
