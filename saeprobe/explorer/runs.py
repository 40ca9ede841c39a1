"""A run folder (``docs/run-folder.md``) opened in the explorer: one session per model and
task, and per model the items each concept fires on (from its activation store).

Everything is read through :class:`saeprobe.run.RunFolder`; a missing part raises its
one-line :class:`~saeprobe.run.RunError` (which file, which command makes it).
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from saeprobe._types import Modality
from saeprobe.run import RunError, RunFolder
from saeprobe.sae import load_sae
from saeprobe.store import ActivationStore

from .app import ExplorerApp, Setting
from .config import check_index, check_int, json_safe
from .content import ConceptContent
from .data import ExplorerData
from .session import ExplorerSession
from .table import FeatureTable, read_features
from .tokens import TokenDecoder, image_grid

logger = logging.getLogger(__name__)

__all__ = ["RunExplorer", "open_run"]


def _label(items: Any, item_id: str) -> str:
    it = items.get(item_id) if items is not None else None
    return (it["text"] or it["id"]) if it else str(item_id)


class RunExplorer(ExplorerApp):
    """A run folder's models and tasks for the explorer.

    Parameters
    ----------
    run_dir : str | Path
        A run folder (``run.json``).
    device : str
        Device of the SAE encoders.
    top_m : int
        Top-activating samples kept per concept.

    Raises
    ------
    RunError
        Not a run folder, or a run without models.
    """

    def __init__(self, run_dir: str | os.PathLike, *, device: str = "cpu", top_m: int = 8) -> None:
        self.run = RunFolder(run_dir)
        if not self.run.models:
            raise RunError(
                f"run {self.run.root} has no model yet; add one with `saeprobe capture ... --run "
                f"{self.run.root} --name MODEL`"
            )
        self.title = self.run.title
        self.device = device
        self.top_m = int(top_m)
        self._lock = threading.RLock()
        self._sae: dict[str, Any] = {}
        self._sessions: dict[tuple[str, str], ExplorerSession] = {}
        self._tables: dict[str, FeatureTable] = {}
        self._content: dict[str, Any] = {}
        self._decoders: dict[str, TokenDecoder] = {}
        self._items: dict[str, Any] = {}
        self._tasks: dict[tuple[str, str], Any] = {}

    # ------------------------------------------------------------------ parts
    def models(self) -> list[dict]:
        out = []
        for m in self.run.models:
            meta = self.run.model(m)
            out.append(
                {
                    "name": m,
                    "tasks": self.run.tasks(m),
                    "kind": meta.get("kind"),
                    "hook_point": meta.get("hook_point"),
                    "d": meta.get("d"),
                    "content": (self.run.root / "models" / m / "store").is_dir(),
                }
            )
        return out

    def sae(self, model: str) -> Any:
        with self._lock:
            if model not in self._sae:
                self._sae[model] = load_sae(str(self.run.sae_path(model)), device=self.device)
            return self._sae[model]

    def items(self, source: str | None) -> Any:
        """The item table of a source (None when the source is None or missing)."""
        if source is None:
            return None
        with self._lock:
            if source not in self._items:
                try:
                    self._items[source] = self.run.items(source)
                except RunError as exc:
                    logger.warning("%s", exc)
                    self._items[source] = None
            return self._items[source]

    def task(self, model: str, task: str) -> Any:
        with self._lock:
            key = (model, task)
            if key not in self._tasks:
                self._tasks[key] = self.run.task(model, task)
            return self._tasks[key]

    def _features_file(self, model: str) -> Path | None:
        p = self.run.root / "models" / model / "analysis" / "features.parquet"
        return p if p.is_file() else None

    def session(self, model: str | None = None, task: str | None = None) -> ExplorerSession:
        model, task = self.resolve(model, task)
        if task is None:
            raise RunError(
                f"model {model!r} of run {self.run.root} has no retrieval task; add one with "
                f"`saeprobe retrieve ... --run {self.run.root} --name {model}`"
            )
        with self._lock:
            key = (model, task)
            if key not in self._sessions:
                t = self.task(model, task)
                qi, ci = self.items(t.query_items), self.items(t.candidate_items)
                data = ExplorerData(
                    t.queries,
                    t.candidates,
                    t.relevant,
                    query_labels=[_label(qi, i) for i in t.query_ids] or None,
                    candidate_labels=[_label(ci, i) for i in t.candidate_ids] or None,
                    query_modality=t.query_modality,
                    candidate_modality=t.candidate_modality,
                )
                self._sessions[key] = ExplorerSession(
                    self.sae(model), data, self._features_file(model)
                )
            return self._sessions[key]

    def table(self, model: str | None = None, task: str | None = None) -> FeatureTable:
        model, task = self.resolve(model, task)
        if task is not None:
            return self.session(model, task).feature_table
        with self._lock:  # no retrieval task: the analysis table, by energy
            if model not in self._tables:
                c = int(self.sae(model).dictionary.shape[0])
                cols = read_features(self.run.features_path(model), c)
                full = {k: [None] * c for k in cols if k != "feature"}
                for k, vals in full.items():
                    for i, v in zip(cols["feature"], cols[k]):
                        vals[i] = v
                full.setdefault("name", [""] * c)
                energy = np.nan_to_num(np.array(full["energy"], dtype=float))
                order = np.argsort(-energy, kind="stable")
                self._tables[model] = FeatureTable(full, order, None, "features table")
            return self._tables[model]

    def content(self, model: str) -> Any:
        """The model's :class:`~saeprobe.explorer.content.ConceptContent` (None without a store)."""
        with self._lock:
            if model not in self._content:
                store_dir = self.run.root / "models" / model / "store"
                self._content[model] = (
                    ConceptContent(
                        self.sae(model), ActivationStore(self.run.store_path(model)), self.top_m
                    )
                    if store_dir.is_dir()
                    else None
                )
            return self._content[model]

    def decoder(self, model: str) -> TokenDecoder:
        with self._lock:
            if model not in self._decoders:
                self._decoders[model] = TokenDecoder(self.run.model(model).get("path"))
            return self._decoders[model]

    def prepare(self, model: str | None = None, task: str | None = None) -> None:
        """Build what the first page view needs (session, concept content, tokenizer)."""
        model, task = self.resolve(model, task)
        if task is not None:
            self.session(model, task)
        else:
            self.table(model, None)
        self.content(model)
        self.decoder(model)

    # ------------------------------------------------------------------ views
    def item_view(self, source: str | None, item_id: str | None) -> dict | None:
        """``{"id", "kind", "text", "thumb" (URL or None), "width", "height"}`` of an item."""
        table = self.items(source)
        if table is None or item_id is None or str(item_id) not in table.row:
            return (
                None
                if item_id is None
                else {
                    "id": str(item_id),
                    "kind": None,
                    "text": None,
                    "thumb": None,
                    "width": None,
                    "height": None,
                }
            )
        r = table.row[str(item_id)]
        w, h = table.sizes[r]
        return {
            "id": table.ids[r],
            "kind": table.kinds[r],
            "text": table.texts[r],
            "thumb": f"/thumbs/{source}/{r}.png" if table.thumbs[r] else None,
            "width": w,
            "height": h,
        }

    def thumb(self, source: str, row: int) -> Path | None:
        if source not in self.run.item_sources:
            return None
        table = self.items(source)
        if table is None or not 0 <= row < len(table) or not table.thumbs[row]:
            return None
        root = table.folder.resolve()
        path = (table.folder / table.thumbs[row]).resolve()
        if root not in path.parents or not path.is_file():
            return None
        return path

    def info(self, model: str | None = None, task: str | None = None) -> dict:
        model, task = self.resolve(model, task)
        out = (
            self.session(model, task).info()
            if task is not None
            else {
                "c": self.table(model).c,
                "n_active": self.table(model).n_active,
                "stats_source": "features table",
                "no_task": True,
            }
        )
        t = self.task(model, task) if task is not None else None
        out.update(
            model=model,
            task=task,
            task_type=t.task_type if t is not None else None,
            tokenizer=self.decoder(model).available,
            content=self.content(model) is not None,
        )
        return json_safe(out)

    def query(
        self, model=None, task=None, i: int = 0, setting: Setting | None = None, top_n: int = 5
    ) -> dict:
        model, task = self.resolve(model, task)
        out = super().query(model, task, i, setting, top_n)
        t = self.task(model, task)
        out["item"] = self.item_view(
            t.query_items, t.query_ids[out["index"]] if t.query_ids else None
        )
        for part in (out["relevant"], out["before"]["top"], out["after"]["top"]):
            for entry in part:
                cid = t.candidate_ids[entry["index"]] if t.candidate_ids else None
                entry["item"] = self.item_view(t.candidate_items, cid)
        return out

    def card(self, model=None, task=None, concept: int = 0, n_items: int = 6) -> dict:
        model, task = self.resolve(model, task)
        table = self.table(model, task)
        concept = check_index(concept, table.c, "feature id")
        n_items = check_int(n_items, "n_items", 1, self.top_m)
        partners = []
        if task is not None:
            s = self.session(model, task)
            partners = [
                {"id": j, "score": v, "tag": s.table["tag"][j]}
                for j, v in s.bridge_partners(concept, 5)
            ]
        out = {
            "id": concept,
            "row": table.row(concept),
            "bridge_partners": partners,
            "items": [],
            "note": None,
        }
        content = self.content(model)
        if content is None:
            out["note"] = (
                f"no activation store for {model}: capture one with `saeprobe capture ... "
                f"--run {self.run.root} --name {model}` to see the items it fires on"
            )
            return json_safe(out)
        top = content.samples(concept, n_items)
        out["max_activation"] = top[0][1] if top else 0.0
        toks = content.tokens(concept, [s for s, _ in top])
        source = self.run.model(model).get("items")
        for sid, act in top:
            item_id = content.item_id(sid)
            if item_id is None and self.items(source) is not None and sid < len(self.items(source)):
                item_id = self.items(source).ids[sid]
            view = self.item_view(source, item_id) or {
                "id": str(sid),
                "kind": None,
                "text": None,
                "thumb": None,
            }
            out["items"].append(self._item_tokens(model, sid, act, view, toks[sid]))
        if not top:
            out["note"] = "this concept does not fire on any token of the store"
        return json_safe(out)

    def _item_tokens(self, model: str, sid: int, act: float, view: dict, tok: Any) -> dict:
        """One top item: its image heatmap (IMAGE tokens as a grid) and its text tokens."""
        mod = tok.modality.long()
        entry: dict[str, Any] = {
            "sample_id": sid,
            "activation": act,
            "item": view,
            "image": None,
            "tokens": None,
        }
        img = mod == int(Modality.IMAGE)
        if bool(img.any()):
            rows, cols = image_grid(int(img.sum()), view.get("width"), view.get("height"))
            entry["image"] = {"rows": rows, "cols": cols, "values": tok.activation[img].tolist()}
        txt = ~img  # the item's own text and the prompt template (dimmed on the page)
        if bool(txt.any()):
            texts = self.decoder(model).decode(tok.token_id[txt].tolist())
            pos = tok.position[txt].tolist()
            kinds = ["text" if m == int(Modality.TEXT) else "template" for m in mod[txt].tolist()]
            entry["tokens"] = [
                {"text": texts[j] if texts else f"#{p}", "act": a, "position": p, "kind": k}
                for j, (p, a, k) in enumerate(zip(pos, tok.activation[txt].tolist(), kinds))
            ]
            entry["decoded"] = texts is not None
        return entry


def open_run(run_dir: str | os.PathLike, **kwargs: Any) -> RunExplorer:
    """:class:`RunExplorer` of ``run_dir`` (see its parameters)."""
    return RunExplorer(run_dir, **kwargs)
