"""Reading a run folder, with one-line errors that say what is missing and how to make it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .layout import (
    EMBEDDINGS_FILE,
    FORMAT,
    INDEX,
    ITEMS_FILE,
    MODEL_FILE,
    RESULTS_FILE,
    VERSION,
    RunError,
    items_dir,
    model_dir,
    task_dir,
)

__all__ = ["ItemTable", "RunFolder", "RunTask"]


@dataclass
class RunTask:
    """One model's embeddings of one retrieval task.

    Attributes
    ----------
    queries : Tensor [Q, d]
    candidates : Tensor [N, d]
    relevant : list[set[int]]
        Per query, the relevant candidate rows.
    query_ids, candidate_ids : list[str]
    query_items, candidate_items : str | None
        Item sources (``RUN/items/<source>``) holding their texts and thumbnails.
    query_modality, candidate_modality : str | None
    task_type : int | None
        The paper's M-BEIR task type.
    results : dict | None
        The stored retrieval scores.
    """

    queries: torch.Tensor
    candidates: torch.Tensor
    relevant: list[set[int]]
    query_ids: list[str]
    candidate_ids: list[str]
    query_items: str | None = None
    candidate_items: str | None = None
    query_modality: str | None = None
    candidate_modality: str | None = None
    task_type: int | None = None
    results: dict | None = None


class ItemTable:
    """An item source: per id its kind, text and thumbnail path (absolute)."""

    def __init__(self, folder: Path):
        import pyarrow.parquet as pq

        self.folder = folder
        cols = pq.read_table(folder / ITEMS_FILE).to_pydict()
        self.ids: list[str] = [str(i) for i in cols["id"]]
        self.kinds: list[str] = list(cols["kind"])
        self.texts: list[str | None] = list(cols["text"])
        self.thumbs: list[str | None] = list(cols["thumb"])
        self.sizes = list(zip(cols["width"], cols["height"], strict=True))
        self.row = {i: r for r, i in enumerate(self.ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def get(self, item_id: str) -> dict[str, Any] | None:
        """``{"id", "kind", "text", "thumb" (Path | None), "size"}`` or None when unknown."""
        r = self.row.get(str(item_id))
        if r is None:
            return None
        thumb = self.thumbs[r]
        return {
            "id": self.ids[r],
            "kind": self.kinds[r],
            "text": self.texts[r],
            "thumb": (self.folder / thumb) if thumb else None,
            "size": self.sizes[r],
        }


class RunFolder:
    """A run folder written by ``saeprobe demo`` (or capture / train / analyze / retrieve
    with ``--run``).

    Raises
    ------
    RunError
        ``root`` is not a run folder, or has another format version.
    """

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index = self.root / INDEX
        if not index.is_file():
            raise RunError(
                f"{self.root} is not a run folder: it has no {INDEX}; make one with "
                "`saeprobe demo --out DIR` or pass --run DIR to capture / train / analyze / retrieve"
            )
        try:
            self.index = json.loads(index.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise RunError(f"{index} is unreadable ({exc}); re-create the run") from exc
        if self.index.get("format") != FORMAT:
            raise RunError(
                f"{index} is not a saeprobe run index (format {self.index.get('format')!r})"
            )
        if self.index.get("version") != VERSION:
            raise RunError(
                f"{index} has run format version {self.index.get('version')}; this saeprobe reads "
                f"version {VERSION}: re-create the run or upgrade saeprobe"
            )

    # ----- index
    @property
    def title(self) -> str:
        return str(self.index.get("title") or self.root.name)

    @property
    def models(self) -> list[str]:
        return list(self.index.get("models", []))

    @property
    def item_sources(self) -> list[str]:
        return list(self.index.get("items", []))

    @property
    def stages(self) -> dict:
        return dict(self.index.get("stages", {}))

    def tasks(self, model: str) -> list[str]:
        self._need_model(model)
        return list(self.index.get("tasks", {}).get(model, []))

    def _need_model(self, model: str) -> None:
        if model not in self.models:
            have = ", ".join(self.models) or "none"
            raise RunError(f"run {self.root} has no model {model!r} (models: {have})")

    # ----- parts
    def model(self, model: str) -> dict:
        """The model's ``model.json``."""
        self._need_model(model)
        return json.loads((model_dir(self.root, model) / MODEL_FILE).read_text(encoding="utf-8"))

    def path(self, model: str, part: str, hint: str) -> Path:
        """``models/<model>/<part>`` (or where ``model.json``'s ``parts`` says it is), or a
        RunError naming it and ``hint`` (how to make it)."""
        self._need_model(model)
        head, _, rest = part.partition("/")
        moved = self.model(model).get("parts", {}).get(head)
        if moved:
            base = self.root / moved  # relative: inside the run folder
            p = base / rest if rest else base
        else:
            p = model_dir(self.root, model) / part
        if not p.exists():
            shown = p.relative_to(self.root) if p.is_relative_to(self.root) else p
            raise RunError(f"run {self.root}: {shown} is missing; {hint}")
        return p

    def sae_path(self, model: str) -> Path:
        return self.path(model, "sae", "train one with `saeprobe train ... --run RUN --name MODEL`")

    def store_path(self, model: str) -> Path:
        return self.path(
            model, "store", "capture one with `saeprobe capture ... --run RUN --name MODEL`"
        )

    def analysis_path(self, model: str) -> Path:
        return self.path(model, "analysis", "run `saeprobe analyze ... --run RUN --name MODEL`")

    def features_path(self, model: str) -> Path:
        return self.path(
            model, "analysis/features.parquet", "run `saeprobe analyze ... --run RUN --name MODEL`"
        )

    def items(self, source: str) -> ItemTable:
        folder = items_dir(self.root, source)
        if not (folder / ITEMS_FILE).is_file():
            raise RunError(
                f"run {self.root}: item source {source!r} is missing ({folder / ITEMS_FILE})"
            )
        return ItemTable(folder)

    def task(self, model: str, task: str) -> RunTask:
        """A model's embeddings of a task (see :class:`RunTask`)."""
        from safetensors import safe_open

        if task not in self.tasks(model):
            have = ", ".join(self.tasks(model)) or "none"
            raise RunError(f"run {self.root}: model {model!r} has no task {task!r} (tasks: {have})")
        folder = task_dir(self.root, model, task)
        with safe_open(str(folder / EMBEDDINGS_FILE), framework="pt") as f:
            t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = dict(f.metadata() or {})
        relevant: list[set[int]] = [set() for _ in range(t["queries"].shape[0])]
        for qi, ci in t["qrels"].tolist():
            relevant[qi].add(ci)

        def js(key: str, default: Any = None) -> Any:
            return json.loads(meta[key]) if key in meta else default

        results = folder / RESULTS_FILE
        return RunTask(
            queries=t["queries"],
            candidates=t["candidates"],
            relevant=relevant,
            query_ids=js("query_ids", []),
            candidate_ids=js("candidate_ids", []),
            query_items=meta.get("query_items"),
            candidate_items=meta.get("candidate_items"),
            query_modality=meta.get("query_modality"),
            candidate_modality=meta.get("candidate_modality"),
            task_type=js("task_type"),
            results=json.loads(results.read_text()) if results.is_file() else None,
        )
