"""Interactive exploration: toggle SAE features, see retrieval change (``saeprobe explore``).

``ExplorerSession(sae, data).evaluate(ablate, op, whiten, alpha)`` is the computation;
:func:`make_server` / :func:`serve_in_thread` wrap it in a local JSON API + one static page
(no network, plotly.js served from the installed ``plotly`` package). See ``docs/explorer.md``.
"""

from __future__ import annotations

from .data import ExplorerData, from_pairs, load_data, save_data
from .server import make_server, serve_in_thread
from .session import OPS, WHITEN, EvalConfig, EvalResult, ExplorerSession
from .synthetic import PlantedSet, planted_retrieval

__all__ = [
    "OPS",
    "WHITEN",
    "EvalConfig",
    "EvalResult",
    "ExplorerData",
    "ExplorerSession",
    "PlantedSet",
    "from_pairs",
    "load_data",
    "make_server",
    "planted_retrieval",
    "save_data",
    "serve_in_thread",
]
