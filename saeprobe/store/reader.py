"""The read-only, streaming view of a finished activation store (one class, its batch order and
the pooled-row readers it offers: kept in one file, ~500 lines)."""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .._types import Modality
from ..distributed import shard_indices
from .format import (
    DTYPES,
    FIELDS,
    LABEL_DTYPES,
    POOLED_INDEX,
    POOLED_PREFIX,
    READABLE_VERSIONS,
    ActivationBatch,
    CorruptShardError,
    StoreError,
    dtype_name,
    file_checksum,
    modality_set,
    sum_counts,
)
from .manifest import load_manifest

__all__ = ["ActivationStore", "pooled_keys", "read_pooled"]


class ActivationStore:
    """Read-only view of a finished activation store.

    Parameters
    ----------
    path : str | Path
        Store folder.
    allow_incomplete : bool
        Read the complete shards of an unfinished store (e.g. during capture).

    Attributes
    ----------
    manifest : dict
    d : int
    dtype : torch.dtype
    n_tokens : int
    n_samples : int
    modality_counts : dict[str, int]
        Tokens per modality name (``template``, ``text``, ``image``, ``system``).
    metadata : dict
    fingerprint : str
    shards : list[dict]
        Per-shard ``file``, ``rank``, ``index``, ``n_tokens``, ``n_samples``,
        ``sample_start``, ``sample_end``, ``modality_counts``, ``bytes``.
    """

    def __init__(
        self, path: str | os.PathLike, *, allow_incomplete: bool = False, verify: bool = True
    ) -> None:
        self.path = Path(path)
        self.manifest = load_manifest(self.path, allow_incomplete=allow_incomplete)
        m = self.manifest
        if m.get("version") not in READABLE_VERSIONS:
            raise StoreError(
                f"store {self.path} has format version {m.get('version')}; this saeprobe reads "
                f"versions {READABLE_VERSIONS}: upgrade saeprobe or capture again"
            )
        self.verify = bool(verify)
        self.d = int(m["d"])
        self.dtype_name = m["dtype"]
        self.dtype = DTYPES[self.dtype_name]
        self.shards: list[dict] = list(m["shards"])
        self.n_tokens = sum(int(s["n_tokens"]) for s in self.shards)
        self.n_samples = sum(int(s["n_samples"]) for s in self.shards)
        self.modality_counts = sum_counts(s["modality_counts"] for s in self.shards)
        self.metadata = m.get("metadata", {})
        self.fingerprint = m.get("fingerprint", "")

    def __len__(self) -> int:
        return self.n_tokens

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, d={self.d}, dtype={self.dtype_name}, "
            f"n_tokens={self.n_tokens}, shards={len(self.shards)})"
        )

    # ---------------------------------------------------------------- shards
    def read_shard(
        self, index: int, fields: Sequence[str] = FIELDS, *, verify: bool | None = None
    ) -> dict[str, torch.Tensor]:
        """Tensors of shard ``index`` (position in :attr:`shards`).

        The file's content hash is checked against the manifest first (``verify``, default:
        the store's setting). Raises :class:`CorruptShardError` for a missing, truncated or
        altered file, naming it and the repair.
        """
        fields = _check_fields(fields, extra=True)
        info = self.shards[index]
        f = self.path / info["file"]
        hint = (
            f"delete it and rerun the same capture: the writer re-creates exactly this shard "
            f"(`saeprobe store verify {self.path}` checks every shard)"
        )
        try:
            size = f.stat().st_size
        except OSError:
            raise CorruptShardError(f"shard {f} is missing; rerun the capture to resume") from None
        if size != info["bytes"]:
            raise CorruptShardError(
                f"shard {f} has {size} bytes but the manifest says {info['bytes']} (truncated?); {hint}"
            )
        want = info.get("checksum")
        if want and (self.verify if verify is None else verify):
            if file_checksum(f) != want:
                raise CorruptShardError(
                    f"shard {f}: content checksum mismatch (altered bytes); {hint}"
                )
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                out = {k: sf.get_tensor(k) for k in fields}
        except Exception as exc:  # safetensors raises its own error types
            raise CorruptShardError(f"shard {f} cannot be read ({exc}); {hint}") from exc
        n = int(info["n_tokens"])
        for k, t in out.items():
            if k not in FIELDS:
                continue
            want_shape = (n, self.d) if k == "acts" else (n,)
            dtype = self.dtype if k == "acts" else LABEL_DTYPES[k]
            if tuple(t.shape) != want_shape or t.dtype != dtype:
                raise CorruptShardError(
                    f"shard {f}: {k} has shape {tuple(t.shape)} {t.dtype}, expected "
                    f"{want_shape} {dtype}; {hint}"
                )
        return out

    @property
    def pooled_keys(self) -> list[str]:
        """Names of the per-sample pooled embeddings stored in the shards (v2 stores)."""
        return pooled_keys(self)

    def read_pooled(self) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
        """Per-sample pooled rows, one per sample (see :func:`read_pooled`)."""
        return read_pooled(self)

    def _count(self, index: int, kept: frozenset[int] | None) -> int:
        info = self.shards[index]
        if kept is None:
            return int(info["n_tokens"])
        counts = info["modality_counts"]
        return sum(int(counts.get(Modality(v).name.lower(), 0)) for v in kept)

    def count_tokens(self, *, modalities=None, exclude=None) -> int:
        """Number of tokens kept by a modality filter."""
        kept = modality_set(modalities, exclude)
        return sum(self._count(i, kept) for i in range(len(self.shards)))

    def read_all(
        self,
        fields: Sequence[str] = FIELDS,
        *,
        dtype: torch.dtype | str | None = None,
        modalities=None,
        exclude=None,
    ) -> ActivationBatch:
        """All tokens in stored order (small stores only).

        Parameters
        ----------
        fields : sequence of str
            Subset of ``("acts", "sample_id", "position", "token_id", "modality")``.
        dtype : torch.dtype | str, optional
            Cast ``acts`` to this dtype.
        modalities, exclude : iterable of Modality / int / name, optional
            Keep only these modalities / drop these (e.g. ``exclude=["system"]``).
        """
        fields = _check_fields(fields)
        kept = modality_set(modalities, exclude)
        pieces = []
        for i in range(len(self.shards)):
            t = self.read_shard(i, _with_modality(fields, kept))
            pieces.append(_apply_filter(t, kept, fields))
        return _to_batch(_cat(pieces, fields, self.d, self.dtype), fields, dtype)

    def read_samples(
        self, sample_ids: Iterable[int], fields: Sequence[str] = FIELDS, *, dtype=None
    ) -> ActivationBatch:
        """All tokens of some samples (stored order), reading only shards whose range covers them.

        Parameters
        ----------
        sample_ids : iterable of int
        fields : sequence of str
        dtype : torch.dtype | str, optional
            Cast ``acts`` to this dtype.
        """
        fields = _check_fields(fields)
        wanted = torch.as_tensor(sorted({int(i) for i in sample_ids}), dtype=torch.int64)
        pieces = []
        for i, s in enumerate(self.shards):
            if wanted.numel() == 0:
                break
            lo = torch.searchsorted(wanted, int(s["sample_start"]))
            if lo >= wanted.numel() or int(wanted[lo]) >= int(s["sample_end"]):
                continue
            load = fields if "sample_id" in fields else (*fields, "sample_id")
            t = self.read_shard(i, load)
            keep = torch.isin(t["sample_id"], wanted)
            if bool(keep.any()):
                pieces.append({k: t[k][keep] for k in fields})
        return _to_batch(_cat(pieces, fields, self.d, self.dtype), fields, dtype)

    # ---------------------------------------------------------------- batches
    def _plan(
        self, shuffle: bool, seed: int, epoch: int, k: int, kept: frozenset[int] | None
    ) -> list[tuple[list[int], int]]:
        n = len(self.shards)
        if shuffle:
            g = torch.Generator().manual_seed(_seed_of(seed, epoch, -1))
            order = torch.randperm(n, generator=g).tolist()
        else:
            order = list(range(n))
        windows = [order[j : j + k] for j in range(0, n, k)]
        return [(w, sum(self._count(i, kept) for i in w)) for w in windows]

    def _load_window(self, window, size, fields, load_fields, kept) -> dict[str, torch.Tensor]:
        """Concatenate the (filtered) tokens of some shards, one shard in memory at a time."""
        buf = _cat([], fields, self.d, self.dtype, n=size)
        at = 0
        for i in window:
            t = _apply_filter(self.read_shard(i, load_fields), kept, fields)
            n = t[fields[0]].shape[0]
            if n != self._count(i, kept) or at + n > size:
                raise CorruptShardError(
                    f"shard {self.path / self.shards[i]['file']} holds {n} tokens of the requested "
                    "modalities, which disagrees with the manifest; delete it and rerun the capture"
                )
            for k in fields:
                buf[k][at : at + n] = t[k]
            at += n
            del t
        return buf

    def n_batches(
        self,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        modalities=None,
        exclude=None,
    ) -> int:
        """Number of batches :meth:`batches` yields per epoch for this rank."""
        total = self.count_tokens(modalities=modalities, exclude=exclude)
        n = len(shard_indices(total, rank, world_size))
        return n // batch_size if drop_last else math.ceil(n / batch_size)

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        dtype: torch.dtype | str | None = None,
        fields: Sequence[str] = FIELDS,
        shuffle_buffer_shards: int = 4,
        modalities=None,
        exclude=None,
        start_batch: int = 0,
        device: torch.device | str | None = None,
        prefetch: bool = False,
    ) -> Iterator[ActivationBatch]:
        """Stream the store in batches of tokens, in bounded memory.

        The epoch order: the shards are permuted with ``(seed, epoch)``, cut
        into windows of ``shuffle_buffer_shards`` shards, and the (filtered)
        tokens of each window are permuted with ``(seed, epoch, window)``.
        Ranks split this token stream into balanced contiguous ranges (the
        first ``N % world_size`` ranks get one token more), so each rank only
        loads the windows it needs, every token is seen exactly once per epoch
        across ranks, and the order is a pure function of
        ``(seed, epoch, world_size)``. At most one window of shards (plus less
        than one batch) is held in memory.

        Parameters
        ----------
        batch_size : int
            Tokens per batch (the last one may be smaller unless ``drop_last``).
        shuffle : bool
            ``False`` reads tokens in stored order.
        seed, epoch : int
            Shuffle seed; a new ``epoch`` gives a new order.
        rank, world_size : int
            Split for data-parallel training.
        drop_last : bool
            Drop this rank's last incomplete batch.
        dtype : torch.dtype | str, optional
            Cast ``acts`` to this dtype (per batch).
        fields : sequence of str
            Fields to load; the others are ``None`` in the batches.
        shuffle_buffer_shards : int
            Shards per shuffle window (memory ~ this many shards).
        modalities, exclude : optional
            Modality filter (e.g. ``exclude=["system"]``), applied before batching.
        start_batch : int
            Skip the first ``start_batch`` batches cheaply (mid-epoch resume).
        device : torch.device | str, optional
            Move each window there once and gather the batches there (e.g.
            ``"cuda"``: the permutation gather runs on the GPU; batches are on it).
        prefetch : bool
            Read the next window in a background thread while the current one
            is consumed (peak memory: two windows instead of one).

        Yields
        ------
        ActivationBatch
        """
        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle_buffer_shards <= 0:
            raise ValueError(f"shuffle_buffer_shards must be positive, got {shuffle_buffer_shards}")
        fields = _check_fields(fields)
        kept = modality_set(modalities, exclude)
        plan = self._plan(shuffle, seed, epoch, shuffle_buffer_shards, kept)
        mine = shard_indices(sum(size for _, size in plan), rank, world_size)
        lo = mine.start
        nb = (
            (mine.stop - lo) // batch_size
            if drop_last
            else math.ceil((mine.stop - lo) / batch_size)
        )
        start, stop = lo + start_batch * batch_size, min(mine.stop, lo + nb * batch_size)
        if start >= stop:
            return
        todo = _windows_between(plan, start, stop)

        def load(job):
            w_index, window, size, _ = job
            buf = self._load_window(window, size, fields, _with_modality(fields, kept), kept)
            perm = None
            if shuffle:
                g = torch.Generator().manual_seed(_seed_of(seed, epoch, w_index))
                perm = torch.randperm(size, generator=g)
            return buf, perm

        carry: list[dict[str, torch.Tensor]] = []
        for (_, _, size, w_lo), buf, perm in _loaded(todo, load, prefetch):
            if device is not None:
                buf = {k: v.to(device) for k, v in buf.items()}
                perm = perm.to(device) if perm is not None else None
            a, b = max(start, w_lo), min(stop, w_lo + size)
            while a < b:
                batch_end = lo + ((a - lo) // batch_size + 1) * batch_size  # of position a
                e = min(b, batch_end)
                carry.append(_take(buf, perm, a - w_lo, e - w_lo))
                a = e
                if e == batch_end or e == stop:
                    yield _to_batch(_cat(carry, fields, self.d, self.dtype), fields, dtype)
                    carry = []
            del buf, perm


def _windows_between(plan, start: int, stop: int) -> list[tuple]:
    """Windows overlapping stream positions ``[start, stop)``: ``(index, shards, size, first
    position)``."""
    todo, offset = [], 0
    for w_index, (window, size) in enumerate(plan):
        if offset < stop and offset + size > start and size > 0:
            todo.append((w_index, window, size, offset))
        offset += size
    return todo


def _loaded(todo: list, load, prefetch: bool) -> Iterator[tuple]:
    """``(job, buffer, permutation)`` per window, the next one read in a background thread
    while the current one is consumed when ``prefetch``."""
    if not prefetch or len(todo) < 2:
        for job in todo:
            yield (job, *load(job))
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-prefetch") as ex:
        future = ex.submit(load, todo[0])
        for j, job in enumerate(todo):
            buf, perm = future.result()
            future = ex.submit(load, todo[j + 1]) if j + 1 < len(todo) else None
            yield job, buf, perm
            del buf, perm


def _take(buf: dict, perm: torch.Tensor | None, a: int, b: int) -> dict[str, torch.Tensor]:
    """Rows ``a:b`` of a window (through its permutation when shuffled), as new tensors."""
    if perm is None:
        return {k: v[a:b].clone() for k, v in buf.items()}
    idx = perm[a:b]
    return {k: v.index_select(0, idx) for k, v in buf.items()}


def _is_pooled_field(name: str) -> bool:
    return name.startswith(POOLED_PREFIX) or name == POOLED_INDEX


def _check_fields(fields: Sequence[str], extra: bool = False) -> tuple[str, ...]:
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    bad = [f for f in fields if f not in FIELDS and not (extra and _is_pooled_field(f))]
    if bad or not fields:
        raise ValueError(f"unknown fields {bad}; choose from {FIELDS}")
    return fields


def _with_modality(fields: tuple[str, ...], kept) -> tuple[str, ...]:
    return fields if kept is None or "modality" in fields else (*fields, "modality")


def _apply_filter(t: dict[str, torch.Tensor], kept, fields) -> dict[str, torch.Tensor]:
    if kept is not None:
        mask = torch.zeros(len(Modality), dtype=torch.bool)
        mask[list(kept)] = True
        keep = mask[t["modality"].to(torch.int64)]
        t = {k: v[keep] for k, v in t.items()}
    return {k: t[k] for k in fields}


def _cat(
    pieces: list[dict[str, torch.Tensor]], fields, d: int, dtype, n: int = 0
) -> dict[str, torch.Tensor]:
    if not pieces:
        return {
            k: torch.empty((n, d), dtype=dtype)
            if k == "acts"
            else torch.empty(n, dtype=LABEL_DTYPES[k])
            for k in fields
        }
    if len(pieces) == 1:
        return dict(pieces[0])
    return {k: torch.cat([p[k] for p in pieces]) for k in fields}


def _to_batch(t: dict[str, torch.Tensor], fields, dtype) -> ActivationBatch:
    if dtype is not None and "acts" in t:
        if not isinstance(dtype, torch.dtype):
            dtype = DTYPES[dtype_name(dtype)]
        t["acts"] = t["acts"].to(dtype)
    return ActivationBatch(*(t.get(k) for k in FIELDS))


def _seed_of(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def pooled_keys(store: ActivationStore) -> list[str]:
    """Names of the per-sample pooled embeddings stored in the shards (v2 stores)."""
    if not store.shards:
        return []
    from safetensors import safe_open

    with safe_open(str(store.path / store.shards[0]["file"]), framework="pt") as sf:
        return sorted(k[len(POOLED_PREFIX) :] for k in sf.keys() if k.startswith(POOLED_PREFIX))


def read_pooled(store: ActivationStore) -> tuple[dict[str, torch.Tensor], torch.Tensor, list[str]]:
    """Per-sample pooled embeddings of every shard of ``store``, one row per sample (by id).

    Returns
    -------
    (``{pool key: FloatTensor [S, d']}``, sample ids LongTensor [S], item ids list[str])
    """
    keys = pooled_keys(store)
    if not keys:
        raise StoreError(
            f"store {store.path} holds no pooled embeddings (captured without pooling, or in "
            "store format v1)"
        )
    from safetensors import safe_open

    parts: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
    sids, ids = [], []
    for i in range(len(store.shards)):
        t = store.read_shard(i, [POOLED_PREFIX + k for k in keys] + [POOLED_INDEX])
        for k in keys:
            parts[k].append(t[POOLED_PREFIX + k])
        sids.append(t[POOLED_INDEX])
        with safe_open(str(store.path / store.shards[i]["file"]), framework="pt") as sf:
            head = json.loads(sf.metadata()["saeprobe"])
        ids += head.get("item_ids") or [str(int(x)) for x in t[POOLED_INDEX]]
    sid = torch.cat(sids)
    order = torch.argsort(sid)
    if sid.unique().numel() != sid.numel():
        raise CorruptShardError(f"store {store.path}: a sample appears in two shards")
    return (
        {k: torch.cat(v)[order] for k, v in parts.items()},
        sid[order],
        [ids[j] for j in order.tolist()],
    )
