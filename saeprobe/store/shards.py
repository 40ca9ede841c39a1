"""Shard files: serialising samples, checking a listed shard, removing stray files."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save

from .._types import Modality
from ..atomic import is_temp_file
from .format import (
    CHECKED_METADATA,
    FIELDS,
    FORMAT,
    LABEL_DTYPES,
    POOLED_INDEX,
    POOLED_PREFIX,
    READABLE_VERSIONS,
    SHARD_RE,
    VERSION,
    checksum,
    describe_differences,
    file_checksum,
    modality_counts,
    shard_name,
)

logger = logging.getLogger(__name__)

__all__ = [
    "manifest_differences",
    "owned",
    "remove_orphans",
    "serialise_shard",
    "shard_damage",
    "validate_labels",
]


def shard_damage(path: Path, info: dict) -> str | None:
    """Why the listed shard ``info`` under ``path`` is unusable (None when it is intact)."""
    f = path / info["file"]
    if not f.exists():
        return "missing"
    size = f.stat().st_size
    if size != info["bytes"]:
        return f"{size} bytes instead of {info['bytes']}"
    want = info.get("checksum")
    if want and file_checksum(f) != want:
        return "content checksum mismatch"
    return None


def serialise_shard(
    samples: list[dict], rank: int, index: int, dtype_name: str
) -> tuple[bytes, dict]:
    """The bytes of a shard holding ``samples`` (each a dict of its tensors) and its manifest
    entry (file, ranges, modality counts, size, content hash)."""
    tensors = {k: torch.cat([s[k] for s in samples]).contiguous() for k in FIELDS}
    keys = [k for k in samples[0] if k.startswith(POOLED_PREFIX)]
    sid = tensors["sample_id"]
    for k in keys:
        tensors[k] = torch.cat([s[k] for s in samples]).contiguous()
    if keys:
        tensors[POOLED_INDEX] = torch.tensor(
            [int(s["sample_id"][0]) for s in samples], dtype=torch.int64
        )
    info = {
        "file": shard_name(rank, index),
        "rank": rank,
        "index": index,
        "n_tokens": int(sid.numel()),
        "n_samples": len(samples),
        "sample_start": int(sid[0]),
        "sample_end": int(sid[-1]) + 1,
        "modality_counts": modality_counts(tensors["modality"]),
    }
    ids = [s["_id"] for s in samples]
    head = {"format": FORMAT, "version": VERSION, "dtype": dtype_name, **info}
    if all(i is not None for i in ids):
        head["item_ids"] = ids
    # a single metadata key: safetensors writes the metadata map in hash order
    data = save(tensors, metadata={"saeprobe": json.dumps(head, sort_keys=True)})
    info["bytes"] = len(data)
    info["checksum"] = checksum(data)
    return data, info


def manifest_differences(m: dict, mine: dict) -> list[str]:
    """What differs between a stored manifest ``m`` and a new writer's settings ``mine``,
    one ``"<field> <stored> (stored) vs <given> (given)"`` each (empty: resumable)."""
    if m.get("format") != FORMAT or m.get("version") not in READABLE_VERSIONS:
        return [f"format {m.get('format')} v{m.get('version')} (stored) vs {FORMAT} v{VERSION}"]
    diffs = []
    for key in ("d", "dtype", "world_size", "shard_tokens", "version"):
        if m.get(key) != mine[key]:
            diffs.append(f"{key} {m.get(key)!r} (stored) vs {mine[key]!r} (given)")
    if m.get("fingerprint") != mine["fingerprint"]:
        old, new = m.get("fingerprint_fields"), mine["fingerprint_fields"]
        if isinstance(old, dict) and isinstance(new, dict):
            diffs += describe_differences(old, new) or ["fingerprint"]
        else:
            diffs.append(
                f"fingerprint {m.get('fingerprint')!r} (stored) vs {mine['fingerprint']!r}"
            )
    stored_meta = m.get("metadata", {})
    for key in CHECKED_METADATA:
        a, b = stored_meta.get(key), mine["metadata"].get(key)
        if key in stored_meta and key in mine["metadata"] and a != b:
            diffs.append(f"{key} {a!r} (stored) vs {b!r} (given)")
    return diffs


def remove_orphans(path: Path, rank: int, manifest_name: str, listed: set[str]) -> None:
    """Delete ``rank``'s shard files not in ``listed``, and its (and its manifest's) temp files."""
    for f in path.iterdir():
        name = f.name
        if is_temp_file(f):
            base = name[1:].split(".tmp", 1)[0]
            m = SHARD_RE.match(base)
            if base == manifest_name or (m and int(m.group(1)) == rank):
                f.unlink(missing_ok=True)
            continue
        m = SHARD_RE.match(name)
        if m and int(m.group(1)) == rank and name not in listed:
            logger.info("removing unlisted shard file %s", f)
            f.unlink()


def owned(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``t`` on the CPU in ``dtype``, never sharing memory with the caller's tensor."""
    out = t.detach().to("cpu", dtype)
    if out.numel() and out.data_ptr() == t.data_ptr():
        out = out.clone()
    return out


def validate_labels(n: int, values: dict) -> dict[str, torch.Tensor]:
    """Per-token label tensors (owned copies in the store's label dtypes), checked: ``n``
    entries each, Modality values, sample ids non-decreasing."""
    labels = {}
    for name, value in values.items():
        t = owned(torch.as_tensor(value), LABEL_DTYPES[name]).reshape(-1)
        if t.numel() != n:
            raise ValueError(f"{name} has {t.numel()} entries but acts has {n} rows")
        labels[name] = t
    mod = labels["modality"]
    if n and (int(mod.min()) < 0 or int(mod.max()) >= len(Modality)):
        raise ValueError(
            f"modality labels must be saeprobe.Modality values 0..{len(Modality) - 1}, got "
            f"{int(mod.min())}..{int(mod.max())} (drop padding tokens before add)"
        )
    sid = labels["sample_id"]
    if bool((sid[1:] < sid[:-1]).any()):
        raise ValueError("sample_id must be non-decreasing within a call (group tokens by sample)")
    return labels
