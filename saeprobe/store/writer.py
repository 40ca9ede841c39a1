"""The resumable, self-repairing writer of one rank's shards (one state machine: kept in one
file, ~500 lines; shard bytes and checks are in :mod:`.shards`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from ..atomic import atomic_write
from .format import (
    DTYPES,
    FORMAT,
    POOLED_PREFIX,
    VERSION,
    CorruptShardError,
    StoreError,
    StoreMismatchError,
    default_shard_tokens,
    dtype_name,
    part_name,
    sum_counts,
)
from .manifest import now, read_manifest, write_manifest
from .shards import (
    manifest_differences,
    owned,
    remove_orphans,
    serialise_shard,
    shard_damage,
    validate_labels,
)

logger = logging.getLogger(__name__)

__all__ = ["ActivationStoreWriter"]


def _write_file(path: Path, data: bytes) -> None:
    """The low-level write of a shard's bytes (patched in tests)."""
    with open(path, "wb") as f:
        f.write(data)


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
        JSON-serialisable description kept in the manifest; the keys ``model``,
        ``hook_point`` and ``layer`` are checked on resume.
    fingerprint : str
        Data fingerprint (see :func:`~saeprobe.store.data_fingerprint`); must match on resume.
    fingerprint_fields : dict, optional
        What the fingerprint covers (:func:`~saeprobe.store.fingerprint_fields`): kept in
        the manifest so a mismatch names the field that differs.
    shard_tokens : int, optional
        Target tokens per shard (samples are never split). Default: ~256 MiB of activations.
    rank, world_size : int
        With ``world_size > 1`` each rank writes its own shards and ``manifest.rank{r}.json``.
    resume : bool
        Continue an existing store written with the same settings (else an existing store
        with shards raises :class:`StoreMismatchError`).

    Notes
    -----
    Call :meth:`add` with the tokens of *complete* samples in increasing ``sample_id``
    order. Samples the store already holds are dropped, so replaying is harmless; feed the
    samples for which :meth:`needs` is true. On opening, listed shards that are missing,
    truncated or whose content checksum differs are *damaged*: the writer re-creates exactly
    those from the samples it is given again (and appends after :attr:`next_sample`).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        d: int,
        dtype: str | torch.dtype = "bf16",
        metadata: dict | None = None,
        fingerprint: str = "",
        fingerprint_fields: dict | None = None,
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
        self.rank, self.world_size = int(rank), int(world_size)
        self.shard_tokens = int(shard_tokens or default_shard_tokens(self.d, self.dtype_name))
        if self.shard_tokens <= 0:
            raise ValueError(f"shard_tokens must be positive, got {shard_tokens}")
        metadata = json.loads(json.dumps(metadata or {}, default=str))
        self._manifest_path = self.path / part_name(self.rank, self.world_size)
        self._buffer: list[dict[str, torch.Tensor]] = []
        self._buffer_tokens = 0
        self._last_sample = -1
        self._dropped_samples = 0
        self._closed = False
        self._failed: str | None = None
        self._pooled_keys: tuple[str, ...] | None = None
        self._repair: dict[int, list[dict]] = {}  # damaged shard index -> buffered samples
        self.path.mkdir(parents=True, exist_ok=True)
        self._check_other_layout()
        fresh = {
            "format": FORMAT,
            "version": VERSION,
            "d": self.d,
            "dtype": self.dtype_name,
            "fingerprint": fingerprint,
            "fingerprint_fields": fingerprint_fields,
            "metadata": metadata,
            "shard_tokens": self.shard_tokens,
            "rank": self.rank,
            "world_size": self.world_size,
            "shards": [],
            "finished": False,
            "created_at": now(),
            "updated_at": now(),
            "finished_at": None,
        }
        m = read_manifest(self._manifest_path) if self._manifest_path.exists() else None
        if m is not None and not m.get("shards"):
            if resume:
                m = None  # an empty skeleton (e.g. a run that failed at once): start afresh
            else:
                raise StoreMismatchError(
                    f"store {self.path} already exists and resume=False: --out a new folder or remove it"
                )
        if m is None:
            self._m = fresh
            self._remove_orphans()
            self._refresh_totals()
            write_manifest(self._manifest_path, self._m)
        else:
            self._check_match(m, fresh, resume)
            self._m = m
            self._recover()
        self._last_sample = self.next_sample - 1

    # ---------------------------------------------------------------- state
    @property
    def next_sample(self) -> int:
        """1 + the largest sample id in listed shards (0 when empty): the tail resumes here."""
        shards = self._m["shards"]
        return int(shards[-1]["sample_end"]) if shards else 0

    @property
    def damaged(self) -> list[dict]:
        """Listed shards still to be re-created (their manifest entries)."""
        return [self._m["shards"][i] for i in sorted(self._repair)]

    def needs(self, sample: int) -> bool:
        """Whether this writer wants the tokens of ``sample`` (a damaged range or the tail)."""
        return sample >= self.next_sample or self._repair_index(sample) is not None

    @property
    def wanted_ranges(self) -> list[tuple[int, int | None]]:
        """Sample ranges ``[start, end)`` still to write (``end=None``: open tail)."""
        ranges = [(int(s["sample_start"]), int(s["sample_end"])) for s in self.damaged]
        return ranges + [(self.next_sample, None)]

    @property
    def n_tokens(self) -> int:
        return int(self._m["n_tokens"])

    @property
    def n_shards(self) -> int:
        return len(self._m["shards"])

    @property
    def finished(self) -> bool:
        return bool(self._m["finished"]) and not self._repair

    @property
    def manifest(self) -> dict:
        return json.loads(json.dumps(self._m))

    def _repair_index(self, sample: int) -> int | None:
        for i in self._repair:
            s = self._m["shards"][i]
            if int(s["sample_start"]) <= sample < int(s["sample_end"]):
                return i
        return None

    # ---------------------------------------------------------------- open / resume
    def _check_other_layout(self) -> None:
        """Refuse to mix single-writer and multi-rank layouts in one folder."""
        hint = "use the same world size, --out a new folder, or remove it"
        if self.world_size == 1:
            parts = sorted(self.path.glob("manifest.rank*.json"))
            if parts:
                raise StoreMismatchError(
                    f"store {self.path} was written by several ranks ({parts[0].name}) but "
                    f"world_size=1 was given: {hint}"
                )
        elif (self.path / "manifest.json").exists() and not any(
            self.path.glob("manifest.rank*.json")
        ):
            m = read_manifest(self.path / "manifest.json")
            if int(m.get("world_size", 1)) != self.world_size:
                raise StoreMismatchError(
                    f"store {self.path} was written with world_size={m.get('world_size', 1)}, "
                    f"not {self.world_size}: {hint}"
                )

    def _check_match(self, m: dict, mine: dict, resume: bool) -> None:
        where = f"store {self.path}"
        if not resume:
            raise StoreMismatchError(
                f"{where} already exists and resume=False: --out a new folder or remove it"
            )
        diffs = manifest_differences(m, mine)
        if diffs:
            raise StoreMismatchError(
                f"{where} holds a capture with other settings: {'; '.join(diffs)}; resume it "
                "with the original settings, or --out a new folder"
            )

    def _recover(self) -> None:
        """Find damaged listed shards (to re-create), remove orphans and temp files."""
        for i, s in enumerate(self._m["shards"]):
            why = shard_damage(self.path, s)
            if why is not None:
                logger.warning(
                    "shard %s is damaged (%s): re-creating samples %d..%d",
                    self.path / s["file"],
                    why,
                    s["sample_start"],
                    int(s["sample_end"]) - 1,
                )
                (self.path / s["file"]).unlink(missing_ok=True)
                self._repair[i] = []
        self._remove_orphans()
        self._refresh_totals()
        if self._repair and self._m["finished"]:
            self._m["finished"] = False
            self._m["finished_at"] = None
            self._m["updated_at"] = now()
            write_manifest(self._manifest_path, self._m)
        if self._m["shards"]:
            logger.info(
                "resuming store %s (rank %d): %d shards (%d damaged), next sample %d",
                self.path,
                self.rank,
                len(self._m["shards"]),
                len(self._repair),
                self.next_sample,
            )

    def _remove_orphans(self) -> None:
        """Delete this rank's shard files missing from the manifest, and its temp files."""
        listed = {x["file"] for x in self._m["shards"]}
        remove_orphans(self.path, self.rank, self._manifest_path.name, listed)

    def _refresh_totals(self) -> None:
        shards = self._m["shards"]
        self._m["n_tokens"] = sum(int(s["n_tokens"]) for s in shards)
        self._m["n_samples"] = sum(int(s["n_samples"]) for s in shards)
        self._m["modality_counts"] = sum_counts(s["modality_counts"] for s in shards)
        self._m["next_sample"] = self.next_sample

    # ---------------------------------------------------------------- writing
    def _usable(self) -> None:
        if self._closed:
            raise StoreError(f"writer of {self.path} is closed")
        if self._failed:
            raise StoreError(
                f"writer of {self.path} failed earlier ({self._failed}); "
                "open a new ActivationStoreWriter to resume"
            )

    def _pooled_rows(
        self, n_samples: int, pooled: dict | None, item_ids: Sequence[str] | None
    ) -> tuple[dict[str, torch.Tensor], list[str]]:
        keys = tuple(sorted(pooled)) if pooled else ()
        if self._pooled_keys is None:
            self._pooled_keys = keys
        elif keys != self._pooled_keys:
            raise ValueError(f"pooled keys {keys} differ from earlier calls {self._pooled_keys}")
        rows = {}
        for k in keys:
            t = owned(torch.as_tensor(pooled[k]), torch.float32)
            if t.ndim != 2 or t.shape[0] != n_samples:
                raise ValueError(
                    f"pooled[{k!r}] must be [{n_samples}, d] (one row per sample), got {tuple(t.shape)}"
                )
            rows[k] = t
        ids = [str(i) for i in item_ids] if item_ids is not None else []
        if item_ids is not None and len(ids) != n_samples:
            raise ValueError(f"item_ids has {len(ids)} entries for {n_samples} samples")
        return rows, ids

    def add(
        self,
        acts: torch.Tensor,
        sample_id: torch.Tensor | Sequence[int],
        position: torch.Tensor | Sequence[int],
        token_id: torch.Tensor | Sequence[int],
        modality: torch.Tensor | Sequence[int],
        *,
        pooled: dict[str, torch.Tensor] | None = None,
        item_ids: Sequence[str] | None = None,
    ) -> None:
        """Add the tokens of one or more *complete* samples.

        Parameters
        ----------
        acts : Tensor [N, d]
            Activations (any float dtype and device; stored as the store dtype).
        sample_id : LongTensor [N]
            Non-decreasing; all tokens of a sample in one call, samples in increasing order
            across calls.
        position : IntTensor [N]
        token_id : LongTensor [N]
        modality : Int8Tensor [N]
        pooled : dict[str, Tensor [S, d']], optional
            Per-sample pooled embeddings of the ``S`` distinct samples of the call (in order),
            stored with the samples' shard (the same keys in every call).
        item_ids : list[str], optional
            The ``S`` samples' item ids (kept in the shard metadata).
        """
        self._usable()
        acts = torch.as_tensor(acts)
        if acts.ndim != 2 or acts.shape[1] != self.d:
            raise ValueError(f"acts must have shape [N, {self.d}], got {tuple(acts.shape)}")
        labels = validate_labels(
            acts.shape[0],
            {
                "sample_id": sample_id,
                "position": position,
                "token_id": token_id,
                "modality": modality,
            },
        )
        if acts.shape[0] == 0:
            return
        sids, counts = torch.unique_consecutive(labels["sample_id"], return_counts=True)
        self._check_order(sids)
        rows, ids = self._pooled_rows(sids.numel(), pooled, item_ids)
        acts = owned(acts, self.dtype).contiguous()
        start = 0
        try:
            for j, (sid, c) in enumerate(zip(sids.tolist(), counts.tolist(), strict=True)):
                sample = {"acts": acts[start : start + c]}
                sample.update({k: v[start : start + c] for k, v in labels.items()})
                sample.update({POOLED_PREFIX + k: v[j : j + 1] for k, v in rows.items()})
                sample["_id"] = ids[j] if ids else None
                start += c
                self._route(sid, c, sample)
        except BaseException as exc:
            self._failed = f"{type(exc).__name__}: {exc}"
            raise

    def _check_order(self, sids: torch.Tensor) -> None:
        """New (tail) samples must follow the last one added, and a finished store takes none."""
        tail = sids[sids >= self.next_sample]
        if not tail.numel():
            return
        if int(tail[0]) <= self._last_sample:
            raise ValueError(
                f"sample {int(tail[0])} was already added (last was {self._last_sample}); "
                "pass complete samples in increasing sample_id order"
            )
        if self._m["finished"]:
            raise StoreError(
                f"store {self.path} is already finished (rank {self.rank}); "
                "--out a new folder to capture again"
            )

    def _route(self, sid: int, n_tokens: int, sample: dict) -> None:
        """Send one sample to a repair buffer, the tail buffer, or drop it (already stored)."""
        if sid < self.next_sample:
            i = self._repair_index(sid)
            if i is None:
                self._dropped_samples += 1
                return
            buf = self._repair[i]
            if buf and sid <= int(buf[-1]["sample_id"][0]):
                return  # replayed within a repair
            buf.append(sample)
            if sid == int(self._m["shards"][i]["sample_end"]) - 1:
                self._write_repair(i)
            return
        if self._buffer_tokens and self._buffer_tokens + n_tokens > self.shard_tokens:
            self._flush()
        self._buffer.append(sample)
        self._buffer_tokens += n_tokens
        self._last_sample = sid
        if self._buffer_tokens >= self.shard_tokens:
            self._flush()

    def _serialise(self, samples: list[dict], index: int) -> tuple[bytes, dict]:
        return serialise_shard(samples, self.rank, index, self.dtype_name)

    def _write(self, data: bytes, info: dict) -> None:
        target = self.path / info["file"]
        atomic_write(target, lambda tmp: _write_file(tmp, data), what="shard", size_hint=len(data))

    def _write_repair(self, i: int) -> None:
        old = self._m["shards"][i]
        data, info = self._serialise(self._repair.pop(i), i)
        if info["n_samples"] != old["n_samples"] or info["sample_start"] != old["sample_start"]:
            raise CorruptShardError(
                f"re-creating shard {old['file']}: got samples {info['sample_start']}.."
                f"{info['sample_end'] - 1} ({info['n_samples']}), the manifest lists "
                f"{old['sample_start']}..{old['sample_end'] - 1} ({old['n_samples']}); the data "
                "changed: capture into a new folder"
            )
        self._write(data, info)
        if info["checksum"] != old.get("checksum"):
            logger.warning(
                "re-created shard %s differs from the original bytes (non-deterministic "
                "kernels?); the manifest now lists the new content",
                old["file"],
            )
            self._m["shards"][i] = info
            self._save_manifest()
        logger.info("re-created damaged shard %s", self.path / old["file"])

    def _flush(self, finish: bool = False) -> None:
        wrote = bool(self._buffer)
        if self._buffer:
            data, info = self._serialise(self._buffer, len(self._m["shards"]))
            self._write(data, info)
            self._m["shards"].append(info)
            self._buffer, self._buffer_tokens = [], 0
        if finish:
            self._m["finished"] = True
            self._m["finished_at"] = now()
        if wrote or finish:
            self._save_manifest()

    def _save_manifest(self) -> None:
        self._refresh_totals()
        self._m["updated_at"] = now()
        write_manifest(self._manifest_path, self._m)

    def close(self) -> None:
        """Flush the last (partial) shard and mark this rank finished.

        Raises :class:`StoreError` when a damaged shard's samples never came back.
        """
        if self._closed:
            return
        self._usable()
        if self._repair:
            names = ", ".join(self._m["shards"][i]["file"] for i in self._repair)
            self._failed = "damaged shards not re-created"
            raise StoreError(
                f"store {self.path}: damaged shards {names} were not re-created (their samples "
                "were not captured again); rerun the capture over the same data"
            )
        if not self._m["finished"]:
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
