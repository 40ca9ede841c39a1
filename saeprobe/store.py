"""Sharded safetensors activation store: resumable writer and streaming reader.

A store is a folder::

    manifest.json                      # one writer (world_size == 1)
    manifest.rank{r}.json              # one part per rank (world_size > 1)
    shard-r{rank:03d}-{index:06d}.safetensors

Each shard holds, per token, ``acts`` [n, d] (fp16 / bf16 / fp32),
``sample_id`` int64, ``position`` int32, ``token_id`` int64 and ``modality``
int8 (:class:`saeprobe.Modality`). A shard only ever holds whole samples and
shard boundaries depend only on the sequence of samples (not on how they were
passed to :meth:`ActivationStoreWriter.add`), so a writer killed at any moment
resumes from its last complete shard and produces a store byte-identical to an
uninterrupted run (manifest timestamps aside). See ``docs/store.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ._types import Modality

logger = logging.getLogger(__name__)

FORMAT = "saeprobe.activation_store"
VERSION = 1
FIELDS: tuple[str, ...] = ("acts", "sample_id", "position", "token_id", "modality")
LABEL_DTYPES: dict[str, torch.dtype] = {
    "sample_id": torch.int64,
    "position": torch.int32,
    "token_id": torch.int64,
    "modality": torch.int8,
}
DTYPES: dict[str, torch.dtype] = {
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
}
_DTYPE_ALIASES = {
    "float16": "fp16",
    "half": "fp16",
    "bfloat16": "bf16",
    "float32": "fp32",
    "float": "fp32",
}
_SHARD_RE = re.compile(r"^shard-r(\d{3})-(\d{6})\.safetensors$")
# keys of the caller's metadata that must match when a store is resumed
_CHECKED_METADATA = ("model", "hook_point", "layer")


class StoreError(Exception):
    """Base class of activation-store errors."""


class StoreMismatchError(StoreError, ValueError):
    """An existing store was written with other settings than the ones given."""


class CorruptShardError(StoreError):
    """A shard file is missing, truncated or does not match the manifest."""


class IncompleteStoreError(StoreError):
    """The store has no manifest, or some rank has not finished writing."""


class ActivationBatch(NamedTuple):
    """A batch of stored tokens (fields not requested are ``None``).

    Attributes
    ----------
    acts : Tensor [B, d]
    sample_id : LongTensor [B]
    position : IntTensor [B]
    token_id : LongTensor [B]
    modality : Int8Tensor [B]
    """

    acts: torch.Tensor | None
    sample_id: torch.Tensor | None
    position: torch.Tensor | None
    token_id: torch.Tensor | None
    modality: torch.Tensor | None


# --------------------------------------------------------------------------- helpers


def dtype_name(dtype: str | torch.dtype) -> str:
    """Canonical store dtype name (``"fp16"``, ``"bf16"`` or ``"fp32"``)."""
    if isinstance(dtype, torch.dtype):
        for name, value in DTYPES.items():
            if value == dtype:
                return name
        raise ValueError(f"unsupported store dtype {dtype}; use one of {sorted(DTYPES)}")
    key = str(dtype).lower().replace("torch.", "")
    key = _DTYPE_ALIASES.get(key, key)
    if key not in DTYPES:
        raise ValueError(f"unsupported store dtype {dtype!r}; use one of {sorted(DTYPES)}")
    return key


def data_fingerprint(spec: Any, item_ids: Iterable[str], settings: Any = None) -> str:
    """Hash of a data spec, the item ids in data order and capture settings.

    Parameters
    ----------
    spec : JSON-serialisable
        Description of the data (source type, path, mode, limit, ...).
    item_ids : iterable of str
        Item ids in data order.
    settings : JSON-serialisable, optional
        Capture settings (model, hook points, prompts, skip_system, ...).

    Returns
    -------
    str
        16 hex digits.
    """
    h = hashlib.sha256()
    h.update(json.dumps(spec, sort_keys=True, default=str).encode())
    h.update(b"\x00")
    for item_id in item_ids:
        h.update(str(item_id).encode())
        h.update(b"\n")
    h.update(b"\x00")
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def shard_name(rank: int, index: int) -> str:
    return f"shard-r{rank:03d}-{index:06d}.safetensors"


def part_name(rank: int, world_size: int) -> str:
    return "manifest.json" if world_size == 1 else f"manifest.rank{rank}.json"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):  # not supported on every platform / filesystem
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _save_safetensors(tensors: dict[str, torch.Tensor], metadata: dict, path: Path) -> None:
    """Serialise ``tensors`` to ``path`` (the low-level write; patched in tests)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)


def _write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (the low-level write; patched in tests)."""
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def _atomic(final: Path, write, what: str) -> None:
    """Run ``write(tmp)`` then fsync and ``os.replace(tmp, final)``; clean up on error."""
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        _fsync_file(tmp)
        os.replace(tmp, final)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        reason = "no space left on device" if exc.errno == errno.ENOSPC else str(exc)
        raise OSError(
            exc.errno,
            f"writing {what} {final.name} in {final.parent} failed ({reason}); earlier shards "
            "and the manifest are intact: free space / fix the folder and rerun to resume",
        ) from exc
    _fsync_dir(final.parent)


def _write_json(path: Path, obj: dict) -> None:
    text = json.dumps(obj, indent=1, sort_keys=True) + "\n"
    _atomic(path, lambda tmp: _write_text(tmp, text), "manifest")


def _owned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` on the CPU in ``dtype``, never sharing memory with the caller's tensor."""
    out = t.detach().to("cpu", dtype)
    if out.numel() and out.data_ptr() == t.data_ptr():
        out = out.clone()
    return out


def _modality_counts(modality: torch.Tensor) -> dict[str, int]:
    counts = torch.bincount(modality.to(torch.int64), minlength=len(Modality))
    if counts.numel() > len(Modality):
        bad = int(modality.max())
        raise ValueError(f"modality label {bad} is not a saeprobe.Modality value")
    return {m.name.lower(): int(counts[int(m)]) for m in Modality}


def _sum_counts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total = {m.name.lower(): 0 for m in Modality}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def _modality_set(
    modalities: Iterable[Any] | None, exclude: Iterable[Any] | None
) -> frozenset[int] | None:
    """Kept modality values, or ``None`` for all."""

    def parse(values: Iterable[Any]) -> set[int]:
        out = set()
        for v in [values] if isinstance(values, (str, int, Modality)) else values:
            if isinstance(v, str):
                try:
                    out.add(int(Modality[v.upper()]))
                except KeyError:
                    raise ValueError(
                        f"unknown modality {v!r}; use one of {[m.name.lower() for m in Modality]}"
                    ) from None
            else:
                out.add(int(Modality(int(v))))
        return out

    if modalities is None and exclude is None:
        return None
    kept = parse(modalities) if modalities is not None else {int(m) for m in Modality}
    if exclude is not None:
        kept -= parse(exclude)
    return frozenset(kept)


def _seed_of(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _default_shard_tokens(d: int, dtype: str) -> int:
    """About 256 MiB of activations per shard, between 1024 and 2**20 tokens."""
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return int(min(max((256 << 20) // (d * itemsize), 1024), 1 << 20))


# --------------------------------------------------------------------------- writer


class ActivationStoreWriter:
    """Resumable writer of one rank's shards.

    Parameters
    ----------
    path : str | Path
        Store folder (created if needed). One store holds one hook point.
    d : int
        Activation width.
    dtype : {"fp16", "bf16", "fp32"} or torch.dtype
        Storage dtype of the activations.
    metadata : dict
        Free-form JSON-serialisable description kept in the manifest; use the
        keys ``model``, ``hook_point`` and ``layer`` (checked on resume) plus
        any capture settings.
    fingerprint : str
        Data fingerprint (see :func:`data_fingerprint`); must match on resume.
    shard_tokens : int, optional
        Target tokens per shard. Samples are never split: a shard is flushed
        before a sample that would overflow it, so shards hold at most
        ``shard_tokens`` tokens unless a single sample is longer. Default:
        about 256 MiB of activations.
    rank, world_size : int
        This writer's rank; with ``world_size > 1`` each rank writes its own
        shards and ``manifest.rank{r}.json``.
    resume : bool
        Continue an existing store written with the same settings (else an
        existing store raises :class:`StoreMismatchError`).

    Notes
    -----
    Call :meth:`add` with the tokens of *complete* samples, in increasing
    ``sample_id`` order (several samples per call are fine). Resume the
    caller's loop at :attr:`next_sample`; tokens of samples below it are
    already stored and are dropped if passed again.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        d: int,
        dtype: str | torch.dtype = "bf16",
        metadata: dict | None = None,
        fingerprint: str = "",
        shard_tokens: int | None = None,
        rank: int = 0,
        world_size: int = 1,
        resume: bool = True,
    ) -> None:
        if int(d) <= 0:
            raise ValueError(f"d must be positive, got {d}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is out of range for world size {world_size}")
        self.path = Path(path)
        self.d = int(d)
        self.dtype_name = dtype_name(dtype)
        self.dtype = DTYPES[self.dtype_name]
        self.rank = int(rank)
        self.world_size = int(world_size)
        self.shard_tokens = int(shard_tokens or _default_shard_tokens(self.d, self.dtype_name))
        if self.shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        metadata = json.loads(json.dumps(metadata or {}, default=str))
        self.path.mkdir(parents=True, exist_ok=True)
        self._manifest_path = self.path / part_name(self.rank, self.world_size)
        self._buffer: list[dict[str, torch.Tensor]] = []
        self._buffer_tokens = 0
        self._last_sample = -1
        self._dropped_samples = 0
        self._closed = False
        self._failed: str | None = None

        self._check_other_layout()
        if self._manifest_path.exists():
            m = _read_manifest(self._manifest_path)
            self._check_match(m, metadata, fingerprint, resume)
            self._m = m
            self._recover()
        else:
            self._m = {
                "format": FORMAT,
                "version": VERSION,
                "d": self.d,
                "dtype": self.dtype_name,
                "fingerprint": fingerprint,
                "metadata": metadata,
                "shard_tokens": self.shard_tokens,
                "rank": self.rank,
                "world_size": self.world_size,
                "shards": [],
                "finished": False,
                "created_at": _now(),
                "updated_at": _now(),
                "finished_at": None,
            }
            self._remove_orphans()
            self._refresh_totals()
            _write_json(self._manifest_path, self._m)
        self._last_sample = self.next_sample - 1

    # ---------------------------------------------------------------- state
    @property
    def next_sample(self) -> int:
        """1 + the largest sample id in complete shards (0 when empty): resume here."""
        shards = self._m["shards"]
        return int(shards[-1]["sample_end"]) if shards else 0

    @property
    def n_tokens(self) -> int:
        """Tokens in complete shards."""
        return int(self._m["n_tokens"])

    @property
    def n_shards(self) -> int:
        return len(self._m["shards"])

    @property
    def finished(self) -> bool:
        return bool(self._m["finished"])

    @property
    def manifest(self) -> dict:
        return json.loads(json.dumps(self._m))

    # ---------------------------------------------------------------- open / resume
    def _check_other_layout(self) -> None:
        """Refuse to mix single-writer and multi-rank layouts in one folder."""
        if self.world_size == 1:
            parts = sorted(self.path.glob("manifest.rank*.json"))
            if parts:
                raise StoreMismatchError(
                    f"store {self.path} was written by several ranks ({parts[0].name}) but "
                    "world_size=1 was given: use the same world size, --out a new folder, or remove it"
                )
        elif (self.path / "manifest.json").exists() and not any(
            self.path.glob("manifest.rank*.json")
        ):
            m = _read_manifest(self.path / "manifest.json")
            if int(m.get("world_size", 1)) != self.world_size:
                raise StoreMismatchError(
                    f"store {self.path} was written with world_size={m.get('world_size', 1)}, "
                    f"not {self.world_size}: use the same world size, --out a new folder, or remove it"
                )

    def _check_match(self, m: dict, metadata: dict, fingerprint: str, resume: bool) -> None:
        where = f"store {self.path}"
        if not resume:
            raise StoreMismatchError(
                f"{where} already exists and resume=False: --out a new folder or remove it"
            )
        diffs = []
        for key, mine in (
            ("d", self.d),
            ("dtype", self.dtype_name),
            ("fingerprint", fingerprint),
            ("world_size", self.world_size),
            ("shard_tokens", self.shard_tokens),
        ):
            if m.get(key) != mine:
                diffs.append(f"{key} {m.get(key)!r} (stored) vs {mine!r} (given)")
        stored_meta = m.get("metadata", {})
        for key in _CHECKED_METADATA:
            if key in stored_meta and key in metadata and stored_meta[key] != metadata[key]:
                diffs.append(f"{key} {stored_meta[key]!r} (stored) vs {metadata[key]!r} (given)")
        if m.get("format") != FORMAT or m.get("version") != VERSION:
            diffs.append(f"format {m.get('format')} v{m.get('version')} vs {FORMAT} v{VERSION}")
        if diffs:
            raise StoreMismatchError(
                f"{where} was written with other settings: {'; '.join(diffs)}; "
                "--out a new folder or remove it"
            )

    def _recover(self) -> None:
        """Drop shards whose files are gone or truncated (and all later ones) and orphans."""
        shards = self._m["shards"]
        keep = len(shards)
        for i, s in enumerate(shards):
            f = self.path / s["file"]
            if not f.exists() or f.stat().st_size != s["bytes"]:
                logger.warning(
                    "shard %s is missing or truncated: resuming %s from sample %d",
                    s["file"],
                    self.path,
                    s["sample_start"],
                )
                keep = i
                break
        changed = keep < len(shards)
        if changed:
            del shards[keep:]
            self._m["finished"] = False
            self._m["finished_at"] = None
        self._remove_orphans()
        self._refresh_totals()
        if changed:
            self._m["updated_at"] = _now()
            _write_json(self._manifest_path, self._m)
        if shards:
            logger.info(
                "resuming store %s (rank %d): %d shards, %d tokens, next sample %d",
                self.path,
                self.rank,
                len(shards),
                self._m["n_tokens"],
                self.next_sample,
            )

    def _remove_orphans(self) -> None:
        """Delete this rank's shard files missing from the manifest and its temp files."""
        listed = {s["file"] for s in self._m["shards"]}
        for f in self.path.iterdir():
            name = f.name
            if name.startswith(".") and ".tmp" in name:
                name = name[1:].rsplit(".tmp", 1)[0]
                if name == self._manifest_path.name:
                    f.unlink()
                    continue
            elif name in listed:
                continue
            m = _SHARD_RE.match(name)
            if m and int(m.group(1)) == self.rank:
                logger.info("removing unfinished shard file %s", f)
                f.unlink()

    def _refresh_totals(self) -> None:
        shards = self._m["shards"]
        self._m["n_tokens"] = sum(int(s["n_tokens"]) for s in shards)
        self._m["n_samples"] = sum(int(s["n_samples"]) for s in shards)
        self._m["modality_counts"] = _sum_counts(s["modality_counts"] for s in shards)
        self._m["next_sample"] = self.next_sample

    # ---------------------------------------------------------------- writing
    def add(
        self,
        acts: torch.Tensor,
        sample_id: torch.Tensor | Sequence[int],
        position: torch.Tensor | Sequence[int],
        token_id: torch.Tensor | Sequence[int],
        modality: torch.Tensor | Sequence[int],
    ) -> None:
        """Add the tokens of one or more *complete* samples.

        Parameters
        ----------
        acts : Tensor [N, d]
            Activations (any float dtype and device; stored as the store dtype).
        sample_id : LongTensor [N]
            Non-decreasing; all tokens of a sample in one call, samples in
            increasing order across calls.
        position : IntTensor [N]
        token_id : LongTensor [N]
        modality : Int8Tensor [N]
        """
        if self._closed:
            raise StoreError(f"writer of {self.path} is closed")
        if self._failed:
            raise StoreError(
                f"writer of {self.path} failed earlier ({self._failed}); "
                "open a new ActivationStoreWriter to resume"
            )
        if self.finished:
            raise StoreError(
                f"store {self.path} is already finished (rank {self.rank}); "
                "--out a new folder to capture again"
            )
        acts = torch.as_tensor(acts)
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise ValueError(f"acts must have shape [N, {self.d}], got {tuple(acts.shape)}")
        n = acts.shape[0]
        labels = {}
        for name, value in (
            ("sample_id", sample_id),
            ("position", position),
            ("token_id", token_id),
            ("modality", modality),
        ):
            t = _owned(torch.as_tensor(value), LABEL_DTYPES[name]).reshape(-1)
            if t.numel() != n:
                raise ValueError(f"{name} has {t.numel()} entries but acts has {n} rows")
            labels[name] = t
        if n == 0:
            return
        mod = labels["modality"]
        if int(mod.min()) < 0 or int(mod.max()) >= len(Modality):
            raise ValueError(
                f"modality labels must be saeprobe.Modality values 0..{len(Modality) - 1}, got "
                f"{int(mod.min())}..{int(mod.max())} (drop padding tokens before add)"
            )
        sid = labels["sample_id"]
        if bool((sid[1:] < sid[:-1]).any()):
            raise ValueError(
                "sample_id must be non-decreasing within a call (group tokens by sample)"
            )
        if int(sid[0]) < self.next_sample:  # already stored: drop (idempotent resume)
            keep = sid >= self.next_sample
            self._dropped_samples += int(torch.unique(sid[~keep]).numel())
            if not bool(keep.any()):
                return
            acts = acts[keep]
            labels = {k: v[keep] for k, v in labels.items()}
            sid = labels["sample_id"]
        if int(sid[0]) <= self._last_sample:
            raise ValueError(
                f"sample {int(sid[0])} was already added (last was {self._last_sample}); "
                "pass complete samples in increasing sample_id order"
            )
        acts = _owned(acts, self.dtype).contiguous()
        _, counts = torch.unique_consecutive(sid, return_counts=True)
        start = 0
        try:
            for c in counts.tolist():
                sample = {"acts": acts[start : start + c]}
                sample.update({k: v[start : start + c] for k, v in labels.items()})
                start += c
                if self._buffer_tokens and self._buffer_tokens + c > self.shard_tokens:
                    self._flush()
                self._buffer.append(sample)
                self._buffer_tokens += c
                if self._buffer_tokens >= self.shard_tokens:
                    self._flush()
        except BaseException as exc:
            self._failed = f"{type(exc).__name__}: {exc}"
            raise
        self._last_sample = int(sid[-1])

    def _flush(self, finish: bool = False) -> None:
        wrote = bool(self._buffer)
        if self._buffer:
            tensors = {k: torch.cat([s[k] for s in self._buffer]).contiguous() for k in FIELDS}
            sid = tensors["sample_id"]
            index = len(self._m["shards"])
            name = shard_name(self.rank, index)
            info = {
                "file": name,
                "rank": self.rank,
                "index": index,
                "n_tokens": int(sid.numel()),
                "n_samples": int(torch.unique_consecutive(sid).numel()),
                "sample_start": int(sid[0]),
                "sample_end": int(sid[-1]) + 1,
                "modality_counts": _modality_counts(tensors["modality"]),
            }
            # a single metadata key: safetensors serialises the metadata map in
            # hash order, so several keys would make the bytes non-deterministic
            meta = {
                "saeprobe": json.dumps(
                    {"format": FORMAT, "version": VERSION, "dtype": self.dtype_name, **info},
                    sort_keys=True,
                )
            }
            target = self.path / name
            _atomic(target, lambda tmp: _save_safetensors(tensors, meta, tmp), "shard")
            info["bytes"] = target.stat().st_size
            self._m["shards"].append(info)
            self._buffer = []
            self._buffer_tokens = 0
        if finish:
            self._m["finished"] = True
            self._m["finished_at"] = _now()
        if wrote or finish:
            self._refresh_totals()
            self._m["updated_at"] = _now()
            _write_json(self._manifest_path, self._m)

    def close(self) -> None:
        """Flush the last (partial) shard and mark this rank finished."""
        if self._closed:
            return
        if self._failed:
            raise StoreError(
                f"writer of {self.path} failed earlier ({self._failed}); "
                "open a new ActivationStoreWriter to resume"
            )
        if not self.finished:
            try:
                self._flush(finish=True)
            except BaseException as exc:
                self._failed = f"{type(exc).__name__}: {exc}"
                raise
        self._closed = True
        if self._dropped_samples:
            logger.info("dropped %d samples that %s already held", self._dropped_samples, self.path)
        logger.info(
            "store %s (rank %d) finished: %d shards, %d tokens",
            self.path,
            self.rank,
            self.n_shards,
            self.n_tokens,
        )

    def __enter__(self) -> ActivationStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:  # leave the store resumable: buffered samples are redone on resume
            self._closed = True


# --------------------------------------------------------------------------- manifests


def _read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"cannot read store manifest {path} ({exc}); remove the store folder and capture again"
        ) from exc
    if m.get("format") != FORMAT:
        raise StoreError(f"{path} is not a saeprobe activation store manifest")
    return m


def _combine_parts(path: Path, parts: list[dict], allow_incomplete: bool) -> dict:
    first = parts[0]
    world = int(first["world_size"])
    ranks = sorted(int(p["rank"]) for p in parts)
    if not allow_incomplete and ranks != list(range(world)):
        missing = sorted(set(range(world)) - set(ranks))
        raise IncompleteStoreError(
            f"store {path} is incomplete: no manifest part for ranks {missing}; "
            "rerun the capture on every rank"
        )
    for p in parts:
        for key in ("d", "dtype", "fingerprint", "world_size", "version"):
            if p.get(key) != first.get(key):
                raise StoreMismatchError(
                    f"store {path}: rank {p['rank']} has {key}={p.get(key)!r} but rank "
                    f"{first['rank']} has {first.get(key)!r}; remove the store and capture again"
                )
    unfinished = [int(p["rank"]) for p in parts if not p.get("finished")]
    if unfinished and not allow_incomplete:
        raise IncompleteStoreError(
            f"store {path} is incomplete: ranks {unfinished} have not finished; "
            "rerun the capture to resume them (or pass allow_incomplete=True)"
        )
    parts = sorted(parts, key=lambda p: int(p["rank"]))
    shards = [s for p in parts for s in p["shards"]]
    return {
        "format": FORMAT,
        "version": first["version"],
        "d": first["d"],
        "dtype": first["dtype"],
        "fingerprint": first["fingerprint"],
        "metadata": first.get("metadata", {}),
        "shard_tokens": first.get("shard_tokens"),
        "world_size": world,
        "shards": shards,
        "n_tokens": sum(int(s["n_tokens"]) for s in shards),
        "n_samples": sum(int(s["n_samples"]) for s in shards),
        "modality_counts": _sum_counts(s["modality_counts"] for s in shards),
        "finished": not unfinished and ranks == list(range(world)),
        "created_at": min(p["created_at"] for p in parts),
        "updated_at": max(p["updated_at"] for p in parts),
        "finished_at": max((p.get("finished_at") or "") for p in parts) or None,
        "parts": [
            {
                "rank": int(p["rank"]),
                "file": part_name(int(p["rank"]), world),
                "n_shards": len(p["shards"]),
                "n_tokens": int(p["n_tokens"]),
                "next_sample": int(p["next_sample"]),
                "finished": bool(p["finished"]),
            }
            for p in parts
        ],
    }


def load_manifest(path: str | os.PathLike, *, allow_incomplete: bool = False) -> dict:
    """The store's manifest (parts of a multi-rank store combined)."""
    path = Path(path)
    if not path.is_dir():
        raise IncompleteStoreError(f"activation store {path} does not exist")
    part_files = sorted(path.glob("manifest.rank*.json"))
    if part_files:
        return _combine_parts(path, [_read_manifest(f) for f in part_files], allow_incomplete)
    single = path / "manifest.json"
    if not single.exists():
        raise IncompleteStoreError(
            f"{path} has no manifest.json: not an activation store (or its capture never started)"
        )
    m = _read_manifest(single)
    if not m.get("finished") and not allow_incomplete:
        raise IncompleteStoreError(
            f"store {path} is not finished; rerun the capture to resume it "
            "(or pass allow_incomplete=True to read its complete shards)"
        )
    return m


def merge_manifests(path: str | os.PathLike) -> dict:
    """Combine the finished per-rank parts into ``manifest.json`` (rank 0, after a barrier).

    Raises :class:`IncompleteStoreError` if a rank is missing or unfinished.
    The reader combines the parts itself, so this is for tools that only read
    ``manifest.json``.
    """
    path = Path(path)
    m = load_manifest(path)
    _write_json(path / "manifest.json", m)
    return m


# --------------------------------------------------------------------------- reader


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

    def __init__(self, path: str | os.PathLike, *, allow_incomplete: bool = False) -> None:
        self.path = Path(path)
        self.manifest = load_manifest(self.path, allow_incomplete=allow_incomplete)
        m = self.manifest
        if m.get("version") != VERSION:
            raise StoreError(
                f"store {self.path} has format version {m.get('version')}; this saeprobe reads "
                f"version {VERSION}: upgrade saeprobe or capture again"
            )
        self.d = int(m["d"])
        self.dtype_name = m["dtype"]
        self.dtype = DTYPES[self.dtype_name]
        self.shards: list[dict] = list(m["shards"])
        self.n_tokens = sum(int(s["n_tokens"]) for s in self.shards)
        self.n_samples = sum(int(s["n_samples"]) for s in self.shards)
        self.modality_counts = _sum_counts(s["modality_counts"] for s in self.shards)
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
    def read_shard(self, index: int, fields: Sequence[str] = FIELDS) -> dict[str, torch.Tensor]:
        """Tensors of shard ``index`` (position in :attr:`shards`).

        Raises :class:`CorruptShardError` for a missing or truncated file.
        """
        fields = _check_fields(fields)
        info = self.shards[index]
        f = self.path / info["file"]
        hint = "delete it and rerun the capture to resume (the writer re-creates it)"
        try:
            size = f.stat().st_size
        except OSError:
            raise CorruptShardError(f"shard {f} is missing; rerun the capture to resume") from None
        if size != info["bytes"]:
            raise CorruptShardError(
                f"shard {f} has {size} bytes but the manifest says {info['bytes']} (truncated?); {hint}"
            )
        try:
            from safetensors import safe_open

            with safe_open(str(f), framework="pt") as sf:
                out = {k: sf.get_tensor(k) for k in fields}
        except Exception as exc:  # safetensors raises its own error types
            raise CorruptShardError(f"shard {f} cannot be read ({exc}); {hint}") from exc
        n = int(info["n_tokens"])
        for k, t in out.items():
            want = (n, self.d) if k == "acts" else (n,)
            dtype = self.dtype if k == "acts" else LABEL_DTYPES[k]
            if tuple(t.shape) != want or t.dtype != dtype:
                raise CorruptShardError(
                    f"shard {f}: {k} has shape {tuple(t.shape)} {t.dtype}, expected {want} {dtype}; {hint}"
                )
        return out

    def _count(self, index: int, kept: frozenset[int] | None) -> int:
        info = self.shards[index]
        if kept is None:
            return int(info["n_tokens"])
        counts = info["modality_counts"]
        return sum(int(counts.get(Modality(v).name.lower(), 0)) for v in kept)

    def count_tokens(self, *, modalities=None, exclude=None) -> int:
        """Number of tokens kept by a modality filter."""
        kept = _modality_set(modalities, exclude)
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
        kept = _modality_set(modalities, exclude)
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
        from .distributed import shard_indices

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
        from .distributed import shard_indices

        if batch_size <= 0:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if shuffle_buffer_shards <= 0:
            raise ValueError(f"shuffle_buffer_shards must be positive, got {shuffle_buffer_shards}")
        fields = _check_fields(fields)
        kept = _modality_set(modalities, exclude)
        load_fields = _with_modality(fields, kept)
        plan = self._plan(shuffle, seed, epoch, shuffle_buffer_shards, kept)
        total = sum(size for _, size in plan)
        mine = shard_indices(total, rank, world_size)
        lo, hi = mine.start, mine.stop
        nb = (hi - lo) // batch_size if drop_last else math.ceil((hi - lo) / batch_size)
        start = lo + start_batch * batch_size
        stop = min(hi, lo + nb * batch_size)
        if start >= stop:
            return
        todo = []  # windows overlapping [start, stop): (index, shards, size, first position)
        offset = 0
        for w_index, (window, size) in enumerate(plan):
            if offset < stop and offset + size > start and size > 0:
                todo.append((w_index, window, size, offset))
            offset += size

        def load(job):
            w_index, window, size, _ = job
            buf = self._load_window(window, size, fields, load_fields, kept)
            perm = None
            if shuffle:
                g = torch.Generator().manual_seed(_seed_of(seed, epoch, w_index))
                perm = torch.randperm(size, generator=g)
            return buf, perm

        def loaded() -> Iterator[tuple[tuple, dict, torch.Tensor | None]]:
            if not prefetch or len(todo) < 2:
                for job in todo:
                    yield (job, *load(job))
                return
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-prefetch") as ex:
                future = ex.submit(load, todo[0])
                for j, job in enumerate(todo):
                    buf, perm = future.result()
                    future = ex.submit(load, todo[j + 1]) if j + 1 < len(todo) else None
                    yield job, buf, perm
                    del buf, perm

        carry: list[dict[str, torch.Tensor]] = []
        for (_, _, size, w_lo), buf, perm in loaded():
            if device is not None:
                buf = {k: v.to(device) for k, v in buf.items()}
                perm = perm.to(device) if perm is not None else None
            a = max(start, w_lo)
            b = min(stop, w_lo + size)
            while a < b:
                # end of the batch that position a belongs to
                batch_end = lo + ((a - lo) // batch_size + 1) * batch_size
                e = min(b, batch_end)
                if perm is None:
                    piece = {k: v[a - w_lo : e - w_lo].clone() for k, v in buf.items()}
                else:
                    idx = perm[a - w_lo : e - w_lo]
                    piece = {k: v.index_select(0, idx) for k, v in buf.items()}
                carry.append(piece)
                a = e
                if e == batch_end or e == stop:
                    yield _to_batch(_cat(carry, fields, self.d, self.dtype), fields, dtype)
                    carry = []
            del buf, perm


def _check_fields(fields: Sequence[str]) -> tuple[str, ...]:
    fields = (fields,) if isinstance(fields, str) else tuple(fields)
    bad = [f for f in fields if f not in FIELDS]
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


__all__ = [
    "FIELDS",
    "ActivationBatch",
    "ActivationStore",
    "ActivationStoreWriter",
    "CorruptShardError",
    "IncompleteStoreError",
    "StoreError",
    "StoreMismatchError",
    "data_fingerprint",
    "load_manifest",
    "merge_manifests",
]
