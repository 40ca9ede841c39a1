"""Interactive exploration: toggle SAE features, see retrieval change (``saeprobe explore``).

``ExplorerSession(sae, data).evaluate(ablate, op, whiten, alpha)`` is the computation;
:class:`RunExplorer` opens a run folder (sessions per model and task, the items each concept
fires on); :func:`make_server` / :func:`serve_in_thread` wrap either in a local JSON API +
one static page (no network, plotly.js served from the installed ``plotly`` package), and
:func:`show` puts that page inline in a notebook. See ``docs/explorer.md``.
"""

from __future__ import annotations

from .app import ExplorerApp, SingleSession
from .config import OPS, SIDES, WHITEN, EvalConfig, EvalResult
from .data import ExplorerData, from_pairs, load_data, save_data
from .notebook import ExplorerView, show
from .runs import RunExplorer, open_run
from .server import make_server, serve_in_thread
from .session import ExplorerSession
from .synthetic import PlantedSet, planted_retrieval
from .table import TABLE_COLUMNS, FeatureTable

__all__ = [
    "OPS",
    "SIDES",
    "TABLE_COLUMNS",
    "WHITEN",
    "EvalConfig",
    "EvalResult",
    "ExplorerApp",
    "ExplorerData",
    "ExplorerSession",
    "ExplorerView",
    "FeatureTable",
    "PlantedSet",
    "RunExplorer",
    "SingleSession",
    "from_pairs",
    "load_data",
    "make_server",
    "open_run",
    "planted_retrieval",
    "save_data",
    "serve_in_thread",
    "show",
]
