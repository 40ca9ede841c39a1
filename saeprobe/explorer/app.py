"""What the page talks to: an *app* holding one or more sessions, addressed by model and task.

:class:`ExplorerApp` is the interface the HTTP server (and the notebook view) use;
:class:`SingleSession` wraps one :class:`ExplorerSession` (``saeprobe explore --sae --data``)
and :class:`saeprobe.explorer.runs.RunExplorer` a whole run folder. Every method returns
JSON-ready dicts and raises ``ValueError`` / :class:`saeprobe.errors.SaeprobeError` with a
one-line message for bad input.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .config import check_index, json_safe
from .session import ExplorerSession
from .table import FeatureTable

__all__ = ["ExplorerApp", "SingleSession", "Setting"]

Setting = dict[str, Any]  # ablate, op, whiten, alpha, sides


def _cfg_args(setting: Setting) -> tuple:
    return (
        setting.get("ablate", []),
        setting.get("op", "subtract"),
        setting.get("whiten", "none"),
        setting.get("alpha", 0.1),
        setting.get("sides", "both"),
    )


class ExplorerApp:
    """Sessions by ``(model, task)``; subclasses say where they come from."""

    title = "saeprobe explorer"

    # ----- to provide
    def models(self) -> list[dict]:
        """``[{"name", "tasks": [...], ...}]``."""
        raise NotImplementedError

    def session(self, model: str | None = None, task: str | None = None) -> ExplorerSession:
        raise NotImplementedError

    # ----- defaults
    def resolve(self, model: str | None, task: str | None) -> tuple[str, str | None]:
        """The model and task a request means (the first ones when not given)."""
        models = self.models()
        names = [m["name"] for m in models]
        if model is None:
            model = names[0]
        if model not in names:
            raise ValueError(f"unknown model {model!r}; choose one of {', '.join(names)}")
        tasks = next(m["tasks"] for m in models if m["name"] == model)
        if task is None:
            task = tasks[0] if tasks else None
        elif task not in tasks:
            raise ValueError(
                f"model {model!r} has no task {task!r}; choose one of {', '.join(tasks) or 'none'}"
            )
        return model, task

    def describe(self) -> dict:
        models = self.models()
        model, task = self.resolve(None, None)
        return json_safe(
            {"title": self.title, "models": models, "default": {"model": model, "task": task}}
        )

    def table(self, model: str | None = None, task: str | None = None) -> FeatureTable:
        return self.session(model, task).feature_table

    def info(self, model: str | None = None, task: str | None = None) -> dict:
        model, task = self.resolve(model, task)
        out = self.session(model, task).info()
        out.update(model=model, task=task)
        return out

    def features(self, model=None, task=None, **page: Any) -> dict:
        """``{"total", "features"}``: a page of :meth:`FeatureTable.page`."""
        total, rows = self.table(model, task).page(**page)
        return {"total": total, "features": rows}

    def scatter(self, model=None, task=None) -> dict:
        return self.table(model, task).scatter()

    def evaluate(self, model=None, task=None, setting: Setting | None = None) -> dict:
        return self.session(model, task).evaluate(*_cfg_args(setting or {})).to_dict()

    def sweep(self, model=None, task=None, setting: Setting | None = None, **kw: Any) -> dict:
        s = setting or {}
        return self.session(model, task).sweep(
            s.get("op", "subtract"),
            s.get("whiten", "none"),
            s.get("alpha", 0.1),
            sides=s.get("sides", "both"),
            **kw,
        )

    def query(
        self, model=None, task=None, i: int = 0, setting: Setting | None = None, top_n: int = 5
    ) -> dict:
        return self.session(model, task).query(i, *_cfg_args(setting or {}), top_n=top_n)

    def card(self, model=None, task=None, concept: int = 0, n_items: int = 6) -> dict:
        """A concept's statistics and bridge partners (items: see :class:`RunExplorer`)."""
        s = self.session(model, task)
        concept = check_index(concept, s.c, "feature id")
        partners = [
            {"id": j, "score": v, "tag": s.table["tag"][j]}
            for j, v in s.bridge_partners(concept, 5)
        ]
        return json_safe(
            {
                "id": concept,
                "row": s.feature(concept),
                "bridge_partners": partners,
                "items": [],
                "note": "no activation store here: open a run folder (saeprobe explore RUN) to see "
                "the items this concept fires on",
            }
        )

    def export(self, model=None, task=None, setting: Setting | None = None) -> dict:
        model, task = self.resolve(model, task)
        out = self.session(model, task).export(*_cfg_args(setting or {}))
        out.update(title=self.title, model=model, task=task)
        return out

    def thumb(self, source: str, row: int) -> Path | None:
        """The file of an item thumbnail, or None (no such item / no thumbnails)."""
        return None


class SingleSession(ExplorerApp):
    """One session as a one-model, one-task app (``model="session"``, ``task="data"``)."""

    def __init__(self, session: ExplorerSession, title: str = "saeprobe explorer") -> None:
        self._session = session
        self.title = title

    def models(self) -> list[dict]:
        return [{"name": "session", "tasks": ["data"], "kind": None, "content": False}]

    def session(self, model: str | None = None, task: str | None = None) -> ExplorerSession:
        self.resolve(model, task)
        return self._session
