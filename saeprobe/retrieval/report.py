"""Retrieval results as text tables and JSON files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..atomic import atomic_write_json

__all__ = ["format_table", "write_json"]


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
    """Atomic JSON write (``default=str`` for paths and other objects)."""
    return atomic_write_json(path, obj, what="results")
