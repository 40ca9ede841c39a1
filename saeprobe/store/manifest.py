"""Store manifests: reading, writing, combining the parts of a multi-rank store."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from ..atomic import atomic_write_text
from .format import (
    FORMAT,
    IncompleteStoreError,
    StoreError,
    StoreMismatchError,
    part_name,
    sum_counts,
)

__all__ = ["load_manifest", "merge_manifests", "now", "read_manifest", "write_manifest"]


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_manifest(path: Path, obj: dict) -> None:
    """Atomic write of a manifest (sorted keys: identical stores give identical files)."""
    atomic_write_text(path, json.dumps(obj, indent=1, sort_keys=True) + "\n", what="manifest")


def read_manifest(path: Path) -> dict:
    try:
        m = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise StoreError(
            f"cannot read store manifest {path} ({exc}); remove the store folder and capture again"
        ) from exc
    if not isinstance(m, dict) or m.get("format") != FORMAT:
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
    merged = {
        k: first.get(k)
        for k in ("format", "version", "d", "dtype", "fingerprint", "fingerprint_fields")
    }
    merged.update(
        {
            "metadata": first.get("metadata", {}),
            "shard_tokens": first.get("shard_tokens"),
            "world_size": world,
            "shards": shards,
            "n_tokens": sum(int(s["n_tokens"]) for s in shards),
            "n_samples": sum(int(s["n_samples"]) for s in shards),
            "modality_counts": sum_counts(s["modality_counts"] for s in shards),
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
    )
    return merged


def load_manifest(path: str | os.PathLike, *, allow_incomplete: bool = False) -> dict:
    """The store's manifest (parts of a multi-rank store combined)."""
    path = Path(path)
    if not path.is_dir():
        raise IncompleteStoreError(f"activation store {path} does not exist")
    part_files = sorted(path.glob("manifest.rank*.json"))
    if part_files:
        return _combine_parts(path, [read_manifest(f) for f in part_files], allow_incomplete)
    single = path / "manifest.json"
    if not single.exists():
        hooks = sorted(p.parent.name for p in path.glob("*/manifest*.json"))
        if hooks:
            raise IncompleteStoreError(
                f"{path} holds one store per hook point ({', '.join(hooks)}): pass one of "
                + ", ".join(str(path / h) for h in hooks[:3])
            )
        raise IncompleteStoreError(
            f"{path} has no manifest.json: not an activation store (or its capture never started)"
        )
    m = read_manifest(single)
    if not m.get("finished") and not allow_incomplete:
        raise IncompleteStoreError(
            f"store {path} is not finished; rerun the capture to resume it "
            "(or pass allow_incomplete=True to read its complete shards)"
        )
    return m


def merge_manifests(path: str | os.PathLike) -> dict:
    """Combine the finished per-rank parts into ``manifest.json`` (rank 0, after a barrier).

    Raises :class:`IncompleteStoreError` if a rank is missing or unfinished. The reader
    combines the parts itself, so this is for tools that only read ``manifest.json``.
    """
    path = Path(path)
    m = load_manifest(path)
    write_manifest(path / "manifest.json", m)
    return m
