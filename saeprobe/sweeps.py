"""Deprecated path: the sweeps live in :mod:`saeprobe.retrieval.sweeps` (re-exported here)."""

from __future__ import annotations

from .retrieval.sweeps import alpha_sweep, layer_sweep, sweep_figure

__all__ = ["alpha_sweep", "layer_sweep", "sweep_figure"]
