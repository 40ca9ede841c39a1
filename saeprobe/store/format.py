"""The activation-store format: names, dtypes, fields, errors, fingerprints, checksums.

A store is a folder holding the activations of one hook point::

    manifest.json                      # one writer (world_size == 1)
    manifest.rank{r}.json              # one part per rank (world_size > 1)
    shard-r{rank:03d}-{index:06d}.safetensors

See ``docs/store.md`` for the manifest and shard layout.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

import torch

from .. import dtypes
from .._types import Modality
from ..errors import SaeprobeError

FORMAT = "saeprobe.activation_store"
#: v2: per-shard content checksums and pooled embeddings inside the shards
VERSION = 2
READABLE_VERSIONS = (1, 2)
FIELDS: tuple[str, ...] = ("acts", "sample_id", "position", "token_id", "modality")
LABEL_DTYPES: dict[str, torch.dtype] = {
    "sample_id": torch.int64,
    "position": torch.int32,
    "token_id": torch.int64,
    "modality": torch.int8,
}
#: activation dtypes a store may hold
STORE_DTYPES = ("fp16", "bf16", "fp32")
DTYPES: dict[str, torch.dtype] = {k: dtypes.DTYPES[k] for k in STORE_DTYPES}
#: prefix of the per-sample pooled tensors in a shard (``pooled.<pool>`` [n_samples, d])
POOLED_PREFIX = "pooled."
POOLED_INDEX = "pooled_sample_id"
SHARD_RE = re.compile(r"^shard-r(\d{3})-(\d{6})\.safetensors$")
CHECKSUM_ALGO = "xxh3_128"
#: keys of the caller's metadata that must match when a store is resumed
CHECKED_METADATA = ("model", "hook_point", "layer")


class StoreError(SaeprobeError):
    """Base class of activation-store errors."""


class StoreMismatchError(StoreError, ValueError):
    """An existing store was written with other settings than the ones given."""


class CorruptShardError(StoreError):
    """A shard file is missing, truncated, or its content does not match the manifest."""


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


def dtype_name(dtype: str | torch.dtype) -> str:
    """Canonical store dtype name (``"fp16"``, ``"bf16"`` or ``"fp32"``)."""
    return dtypes.short_name(dtype, allowed=STORE_DTYPES)


def shard_name(rank: int, index: int) -> str:
    return f"shard-r{rank:03d}-{index:06d}.safetensors"


def part_name(rank: int, world_size: int) -> str:
    return "manifest.json" if world_size == 1 else f"manifest.rank{rank}.json"


def checksum(data: bytes | memoryview) -> str:
    """Content hash of a shard's bytes, ``"xxh3_128:<32 hex digits>"``."""
    import xxhash

    return f"{CHECKSUM_ALGO}:{xxhash.xxh3_128_hexdigest(data)}"


def file_checksum(path: str | os.PathLike) -> str:
    """:func:`checksum` of a file's bytes (read through a memory map)."""
    with open(path, "rb") as f:
        if os.fstat(f.fileno()).st_size == 0:
            return checksum(b"")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return checksum(m)


def canonical_spec(value: Any) -> Any:
    """A data / model spec with local paths made absolute (so ``demo/model`` and its
    absolute spelling fingerprint alike); anything else unchanged."""
    if isinstance(value, (str, os.PathLike)) and str(value) and Path(value).exists():
        return str(Path(value).resolve())
    if isinstance(value, dict):
        return {k: canonical_spec(v) for k, v in value.items()}
    return value


def fingerprint_fields(spec: Any, item_ids: Iterable[str], settings: Any = None) -> dict:
    """What a store fingerprint covers, field by field (JSON-ready).

    ``data``: the data spec (local paths resolved); ``n_items`` and ``item_ids``: the
    count and a SHA-256 of the item ids in data order; ``settings``: capture settings.
    """
    h = hashlib.sha256()
    n = 0
    for item_id in item_ids:
        h.update(str(item_id).encode())
        h.update(b"\n")
        n += 1
    return {
        "data": json.loads(json.dumps(canonical_spec(spec), default=str)),
        "n_items": n,
        "item_ids": h.hexdigest()[:16],
        "settings": json.loads(json.dumps(canonical_spec(settings), default=str)),
    }


def fingerprint_of(fields: dict) -> str:
    """16 hex digits of a SHA-256 over :func:`fingerprint_fields`."""
    text = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def data_fingerprint(spec: Any, item_ids: Iterable[str], settings: Any = None) -> str:
    """Hash of a data spec, the item ids in data order and capture settings (16 hex)."""
    return fingerprint_of(fingerprint_fields(spec, item_ids, settings))


def describe_differences(stored: dict, given: dict, prefix: str = "") -> list[str]:
    """``["settings.pools ['mean'] (stored) vs ['last'] (given)", ...]`` for nested dicts."""
    out = []
    for key in sorted(set(stored) | set(given)):
        a, b = stored.get(key), given.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += describe_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key} {a!r} (stored) vs {b!r} (given)")
    return out


def modality_counts(modality: torch.Tensor) -> dict[str, int]:
    """Tokens per modality name of an int8 label tensor."""
    counts = torch.bincount(modality.to(torch.int64), minlength=len(Modality))
    if counts.numel() > len(Modality):
        raise ValueError(f"modality label {int(modality.max())} is not a saeprobe.Modality value")
    return {m.name.lower(): int(counts[int(m)]) for m in Modality}


def sum_counts(dicts: Iterable[dict[str, int]]) -> dict[str, int]:
    total = {m.name.lower(): 0 for m in Modality}
    for d in dicts:
        for k, v in d.items():
            total[k] = total.get(k, 0) + int(v)
    return total


def modality_set(modalities: Any, exclude: Any) -> frozenset[int] | None:
    """Kept modality values (names, ints or ``Modality``), or ``None`` for all."""

    def parse(values: Any) -> set[int]:
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


def default_shard_tokens(d: int, dtype: str) -> int:
    """About 256 MiB of activations per shard, between 1024 and 2**20 tokens."""
    itemsize = torch.empty((), dtype=DTYPES[dtype]).element_size()
    return int(min(max((256 << 20) // (d * itemsize), 1024), 1 << 20))
