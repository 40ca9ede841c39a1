"""The explorer's HTTP routes: request path + parameters -> an app call -> a JSON answer.

The HTTP plumbing (limits, headers, timeouts) is :mod:`.server`; this module only parses
parameters (strictly: integers are digits, lists are comma-separated integers) and maps
routes onto :class:`~saeprobe.explorer.app.ExplorerApp` methods.

Routes
------
``GET /``                         the page (``static/index.html``)
``GET /static/<file>``            the page's files, and plotly.js from the installed ``plotly``
``GET /thumbs/<source>/<row>.png`` an item thumbnail of a run folder
``GET /api/run``                  title, models and their tasks, the default choice
``GET /api/info``                 sizes, options, baseline metrics (``?model=&task=``)
``GET /api/features``             a page of the feature table (``limit offset sort desc tag q``)
``GET /api/scatter``              energy vs modality score of the active concepts
``GET /api/card/<id>``            a concept's card: statistics, partners, top items (``n``)
``GET /api/query/<i>``            one query's top-k before / after (``ablate op whiten alpha sides top``)
``POST /api/evaluate``            ``{model, task, ablate, op, whiten, alpha, sides}`` -> metrics
``POST /api/sweep``               ``{model, task, op, whiten, alpha, sides, n_max, steps}``
``POST /api/export``              the setting, its metrics and the ablated features (a download)
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, NamedTuple

from .app import ExplorerApp

__all__ = [
    "STATIC_DIR",
    "STATIC_FILES",
    "NotFound",
    "Reply",
    "handle_get",
    "handle_post",
    "plotly_js_path",
]

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = ("index.html", "app.js", "card.js", "main.js", "style.css")
_INT = re.compile(r"^[0-9]{1,9}$")
_THUMB = re.compile(r"^/thumbs/([A-Za-z0-9][A-Za-z0-9._-]{0,79})/([0-9]{1,9})\.png$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_MAX_LIST = 4096


class NotFound(LookupError):
    """No such route or file (answered 404)."""


class Reply(NamedTuple):
    """An answer: ``body`` (bytes), or ``path`` of a file to send; ``download`` names an
    attachment."""

    status: int = 200
    body: bytes | None = None
    ctype: str = "application/json"
    path: Path | None = None
    download: str | None = None


def plotly_js_path() -> Path:
    """The ``plotly.min.js`` bundled with the installed ``plotly`` Python package."""
    import plotly

    path = Path(plotly.__file__).parent / "package_data" / "plotly.min.js"
    if not path.is_file():
        raise FileNotFoundError(
            f"plotly.min.js not found at {path}; reinstall plotly (pip install --force-reinstall plotly)"
        )
    return path


def _json(obj: Any, status: int = 200, download: str | None = None) -> Reply:
    return Reply(
        status, json.dumps(obj, allow_nan=False).encode(), "application/json", None, download
    )


# ------------------------------------------------------------------ query-string parameters
def _one(qs: dict, key: str) -> str | None:
    v = qs.get(key)
    if not v:
        return None
    if len(v) > 1:
        raise ValueError(f"parameter {key!r} is given {len(v)} times; give it once")
    return v[0]


def q_int(qs: dict, key: str, default: int) -> int:
    v = _one(qs, key)
    if v is None:
        return default
    if not _INT.match(v):
        raise ValueError(f"{key} must be a non-negative integer, got {v!r}")
    return int(v)


def q_ids(qs: dict, key: str) -> list[int]:
    v = _one(qs, key) or ""
    parts = [p.strip() for p in v.split(",") if p.strip()]
    if len(parts) > _MAX_LIST:
        raise ValueError(f"{key} lists {len(parts)} ids; at most {_MAX_LIST}")
    bad = [p for p in parts if not _INT.match(p)]
    if bad:
        raise ValueError(f"{key} must be comma-separated feature ids (integers), got {bad[0]!r}")
    return [int(p) for p in parts]


def q_float(qs: dict, key: str, default: float) -> float:
    v = _one(qs, key)
    if v is None:
        return default
    try:
        return float(v)
    except ValueError:
        raise ValueError(f"{key} must be a number, got {v!r}") from None


def q_name(qs: dict, key: str) -> str | None:
    v = _one(qs, key)
    if v is not None and not _NAME.match(v):
        raise ValueError(f"{key} {v!r} is not a model / task name (letters, digits, '.', '_', '-')")
    return v


def _where(qs: dict) -> tuple[str | None, str | None]:
    return q_name(qs, "model"), q_name(qs, "task")


def _setting_qs(qs: dict) -> dict:
    return {
        "ablate": q_ids(qs, "ablate"),
        "op": _one(qs, "op") or "subtract",
        "whiten": _one(qs, "whiten") or "none",
        "alpha": q_float(qs, "alpha", 0.1),
        "sides": _one(qs, "sides") or "both",
    }


# ------------------------------------------------------------------ body parameters
def _body_name(body: dict, key: str) -> str | None:
    v = body.get(key)
    if v is not None and (not isinstance(v, str) or not _NAME.match(v)):
        raise ValueError(f"{key} must be a model / task name, got {v!r}")
    return v


def _setting_body(body: dict) -> dict:
    ablate = body.get("ablate", [])
    if isinstance(ablate, list) and len(ablate) > _MAX_LIST:
        raise ValueError(f"ablate lists {len(ablate)} ids; at most {_MAX_LIST}")
    return {
        "ablate": ablate,
        "op": body.get("op", "subtract"),
        "whiten": body.get("whiten", "none"),
        "alpha": body.get("alpha", 0.1),
        "sides": body.get("sides", "both"),
    }


# ------------------------------------------------------------------ dispatch
def handle_get(app: ExplorerApp, path: str, qs: dict) -> Reply:
    """Answer a GET (raises ``ValueError`` for bad input, :class:`NotFound` for no route)."""
    if path in ("/", "/index.html"):
        return Reply(path=STATIC_DIR / "index.html", ctype="text/html")
    if path.startswith("/static/"):
        name = path[len("/static/") :]
        if name == "plotly.min.js":
            return Reply(path=plotly_js_path(), ctype="text/javascript")
        if name in STATIC_FILES:
            return Reply(path=STATIC_DIR / name, ctype="")
        raise NotFound(f"no static file {name!r}")
    m = _THUMB.match(path)
    if m:
        f = app.thumb(m.group(1), int(m.group(2)))
        if f is None:
            raise NotFound("no such thumbnail")
        return Reply(path=f, ctype="image/png")
    if path == "/favicon.ico":
        return Reply(204, b"", "image/x-icon")
    if not path.startswith("/api/"):
        raise NotFound(f"no route {path}")
    return _api_get(app, path[len("/api/") :], qs)


def _api_get(app: ExplorerApp, route: str, qs: dict) -> Reply:
    model, task = _where(qs)
    if route == "run":
        return _json(app.describe())
    if route == "info":
        return _json(app.info(model, task))
    if route == "features":
        desc = _one(qs, "desc")
        page = dict(
            limit=min(q_int(qs, "limit", 200), 5000),
            offset=q_int(qs, "offset", 0),
            sort=_one(qs, "sort") or "rank",
            descending=None if desc is None else desc in ("1", "true"),
            tag=_one(qs, "tag") or None,
            search=(_one(qs, "q") or "")[:200] or None,
        )
        return _json(app.features(model, task, **page))
    if route == "scatter":
        return _json(app.scatter(model, task))
    head, _, tail = route.partition("/")
    if head in ("card", "query") and tail:
        if not _INT.match(tail):
            raise ValueError(f"{head} index must be a non-negative integer, got {tail!r}")
        if head == "card":
            return _json(app.card(model, task, int(tail), n_items=q_int(qs, "n", 6)))
        return _json(app.query(model, task, int(tail), _setting_qs(qs), top_n=q_int(qs, "top", 5)))
    raise NotFound(f"no route /api/{route}")


def handle_post(app: ExplorerApp, path: str, body: dict) -> Reply:
    """Answer a POST with a JSON object body."""
    model, task = _body_name(body, "model"), _body_name(body, "task")
    setting = _setting_body(body)
    if path == "/api/evaluate":
        return _json(app.evaluate(model, task, setting))
    if path == "/api/sweep":
        return _json(
            app.sweep(model, task, setting, n_max=body.get("n_max", 32), steps=body.get("steps"))
        )
    if path == "/api/export":
        out = app.export(model, task, setting)
        name = f"saeprobe-explorer-{out.get('model')}-{out.get('task')}.json"
        return _json(out, download=name)
    raise NotFound(f"no route {path}")
