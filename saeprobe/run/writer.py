"""Writing a run folder: items with thumbnails, models, per-task embeddings, stage times."""

from __future__ import annotations

import io
import json
import logging
import os
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .._types import Item
from ..atomic import (
    atomic_save_safetensors,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_parquet,
)
from .layout import (
    EMBEDDINGS_FILE,
    FORMAT,
    INDEX,
    ITEMS_FILE,
    MODEL_FILE,
    MODEL_KINDS,
    RESULTS_FILE,
    VERSION,
    RunError,
    check_name,
    items_dir,
    model_dir,
    task_dir,
)

logger = logging.getLogger(__name__)

__all__ = ["RunWriter", "write_items", "write_retrieval_file"]


def _thumbnail(image: Any, size: int) -> bytes:
    img = image.convert("RGB")
    img.thumbnail((size, size))
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def write_items(folder: str | os.PathLike, items: Iterable[Item], thumb_size: int = 128) -> int:
    """Write ``items.parquet`` (id, kind, text, thumb, width, height) and a PNG thumbnail per
    image item under ``folder``; returns the number of items. Ids must be unique."""
    import pyarrow as pa

    folder = Path(folder)
    rows: dict[str, list] = {k: [] for k in ("id", "kind", "text", "thumb", "width", "height")}
    seen: set[str] = set()
    for n, item in enumerate(items):
        if item.id in seen:
            raise RunError(f"item id {item.id!r} appears twice; item ids must be unique")
        seen.add(item.id)
        thumb = None
        w = h = None
        if item.image is not None:
            thumb = f"thumbs/{n:06d}.png"
            w, h = item.image.size
            atomic_write_bytes(folder / thumb, _thumbnail(item.image, thumb_size), what="thumbnail")
        for key, value in (
            ("id", item.id),
            ("kind", item.kind),
            ("text", item.text or None),
            ("thumb", thumb),
            ("width", w),
            ("height", h),
        ):
            rows[key].append(value)
    table = pa.table(rows)
    atomic_write_parquet(folder / ITEMS_FILE, table, what="item table")
    return len(rows["id"])


def write_retrieval_file(
    path: str | os.PathLike,
    queries: torch.Tensor,
    candidates: torch.Tensor,
    relevant: Sequence[Iterable[int]],
    meta: dict[str, Any] | None = None,
) -> Path:
    """The explorer data file: ``queries`` [Q, d], ``candidates`` [N, d], ``qrels`` int64
    [R, 2] (query row, candidate row); ``meta`` values are stored as JSON strings when they
    are not strings (e.g. ``query_labels``, ``query_ids``)."""
    q, c = queries.float().contiguous(), candidates.float().contiguous()
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1]:
        raise ValueError(
            f"queries [Q, d] and candidates [N, d] must share d, got {tuple(q.shape)}, {tuple(c.shape)}"
        )
    if len(relevant) != q.shape[0]:
        raise ValueError(f"relevance lists {len(relevant)} queries for {q.shape[0]} rows")
    pairs = [(qi, int(ci)) for qi, r in enumerate(relevant) for ci in sorted(r)]
    tensors = {
        "queries": q,
        "candidates": c,
        "qrels": torch.tensor(pairs, dtype=torch.long).reshape(-1, 2),
    }
    strings = {
        k: v if isinstance(v, str) else json.dumps(v)
        for k, v in (meta or {}).items()
        if v is not None
    }
    return atomic_save_safetensors(path, tensors, strings or None, what="retrieval embeddings")


class RunWriter:
    """Create or extend a run folder (each command adds its part; ``run.json`` is updated
    atomically after every change).

    Parameters
    ----------
    root : str | Path
    title : str, optional
    """

    def __init__(self, root: str | os.PathLike, *, title: str | None = None):
        self.root = Path(root)
        index = self.root / INDEX
        if index.exists():
            try:
                self.index = json.loads(index.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise RunError(
                    f"{index} is unreadable ({exc}); remove it or use another --run"
                ) from exc
            if self.index.get("format") != FORMAT:
                raise RunError(f"{index} is not a saeprobe run index; use another --run folder")
        else:
            if self.root.exists() and any(self.root.iterdir()):
                raise RunError(
                    f"{self.root} exists and is not a run folder (no {INDEX}); pass an empty or "
                    "new folder"
                )
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            self.index = {
                "format": FORMAT,
                "version": VERSION,
                "title": title or self.root.name,
                "created_at": now,
                "models": [],
                "items": [],
                "tasks": {},
                "stages": {},
            }
        if title:
            self.index["title"] = title
        self.save()

    def save(self) -> None:
        atomic_write_json(self.root / INDEX, self.index, what="run index")

    # ----- parts
    def add_items(self, source: str, items: Iterable[Item], thumb_size: int = 128) -> Path:
        """Write an item source (texts and thumbnails) under ``items/<source>/``."""
        folder = items_dir(self.root, source)
        n = write_items(folder, items, thumb_size)
        if source not in self.index["items"]:
            self.index["items"].append(source)
        self.index.setdefault("item_counts", {})[source] = n
        self.save()
        return folder

    def add_model(
        self,
        name: str,
        *,
        path: str,
        kind: str,
        d: int,
        hook_point: str = "final_norm",
        pool: str = "mean",
        items: str | None = None,
        **extra: Any,
    ) -> Path:
        """Register a model (``kind``: ``mllm`` or ``dual``); returns its folder."""
        if kind not in MODEL_KINDS:
            raise RunError(f"model kind must be one of {MODEL_KINDS}, got {kind!r}")
        folder = model_dir(self.root, name)
        meta = {
            "name": name,
            "path": str(path),
            "kind": kind,
            "d": int(d),
            "hook_point": hook_point,
            "pool": pool,
            "items": items,
            **extra,
        }
        atomic_write_json(folder / MODEL_FILE, meta, what="model description")
        if name not in self.index["models"]:
            self.index["models"].append(name)
        self.save()
        return folder

    def add_adapter(self, name: str, adapter: Any, *, path: str, **fields: Any) -> Path:
        """:meth:`add_model` with ``kind`` and ``d`` read from a loaded model adapter."""
        kind = "dual" if getattr(adapter, "is_dual_encoder", False) else "mllm"
        return self.add_model(name, path=path, kind=kind, d=int(adapter.d_model), **fields)

    def set_part(self, name: str, part: str, path: str | os.PathLike) -> None:
        """Record in ``model.json`` that ``part`` (``store`` / ``sae`` / ``analysis``) of model
        ``name`` lives at ``path``: relative to the run folder when inside it, nothing (an
        earlier record dropped) when it is the default ``models/<name>/<part>``."""
        folder = self.model_dir(name)
        meta = json.loads((folder / MODEL_FILE).read_text(encoding="utf-8"))
        where = Path(path).resolve()
        root = self.root.resolve()
        parts = meta.setdefault("parts", {})
        if where == (folder / part).resolve():
            if parts.pop(part, None) is None:
                return
        else:  # inside the run: relative, so the run folder can be moved or copied whole
            parts[part] = (
                where.relative_to(root).as_posix() if where.is_relative_to(root) else str(where)
            )
        atomic_write_json(folder / MODEL_FILE, meta, what="model description")

    def model_dir(self, name: str) -> Path:
        if name not in self.index["models"]:
            raise RunError(f"model {name!r} is not in {self.root}; add_model() it first")
        return model_dir(self.root, name)

    def add_task(
        self,
        model: str,
        task: str,
        *,
        queries: torch.Tensor,
        candidates: torch.Tensor,
        relevant: Sequence[Iterable[int]],
        query_ids: Sequence[str],
        candidate_ids: Sequence[str],
        query_items: str | None = None,
        candidate_items: str | None = None,
        query_modality: str | None = None,
        candidate_modality: str | None = None,
        task_type: int | None = None,
        results: dict | None = None,
    ) -> Path:
        """Store one model's embeddings of one retrieval task (+ its scores)."""
        self.model_dir(model)
        check_name(task, "task")
        if len(query_ids) != queries.shape[0] or len(candidate_ids) != candidates.shape[0]:
            raise ValueError("query_ids / candidate_ids must have one id per embedding row")
        folder = task_dir(self.root, model, task)
        meta = {
            "query_ids": list(query_ids),
            "candidate_ids": list(candidate_ids),
            "query_items": query_items,
            "candidate_items": candidate_items,
            "query_modality": query_modality,
            "candidate_modality": candidate_modality,
            "task_type": task_type,
        }
        write_retrieval_file(folder / EMBEDDINGS_FILE, queries, candidates, relevant, meta)
        if results is not None:
            atomic_write_json(folder / RESULTS_FILE, results, what="retrieval results")
        tasks = self.index["tasks"].setdefault(model, [])
        if task not in tasks:
            tasks.append(task)
        self.save()
        return folder

    def set_stage(self, name: str, seconds: float, **info: Any) -> None:
        """Record a stage's wall time (and anything else worth keeping) in ``run.json``."""
        self.index["stages"][name] = {"seconds": round(float(seconds), 3), **info}
        self.save()
