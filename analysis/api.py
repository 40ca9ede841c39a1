"""``analyze_store``: the analysis entry point (load the SAE / store / pairs, analyse, write
the features table, the summary and the HTML report into one folder, published atomically)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

from saeprobe.atomic import atomic_dir
from saeprobe.sae import load_sae
from saeprobe.store import ActivationStore

from .cards import ItemLookup
from .pairs import Pairs, load_pairs
from .pipeline import AnalysisConfig, AnalysisResult, analyze, write_features, write_summary
from .report import write_report

__all__ = ["ReportFiles", "analyze_store"]


class ReportFiles(NamedTuple):
    """What :func:`analyze_store` wrote (paths) and the in-memory result."""

    html: Path
    table: Path
    csv: Path
    summary: Path
    result: AnalysisResult


def analyze_store(
    sae: Any,
    activations: Any = None,
    out: str | os.PathLike = "analysis_report",
    pairs: Any = None,
    items: ItemLookup = None,
    cfg: Any = None,
    layer_sweep: Any = None,
    alpha_sweep: Any = None,
    title: str = "saeprobe concept analysis",
    progress: bool = False,
    meta: dict | None = None,
    force: bool = False,
) -> ReportFiles:
    """Analyse and write everything into ``out`` in one call (what ``saeprobe analyze`` does).

    ``sae``: an SAE or a path for :func:`saeprobe.sae.load_sae`; ``activations``: an
    :class:`saeprobe.store.ActivationStore` or its folder; ``pairs``: :class:`~analysis.Pairs`
    or a pairs file; ``items``: list / dict / callable / data source resolving store sample
    ids to items; ``meta``: extra rows for the report summary. The folder ``out`` is built in
    a staging folder and published complete (an existing one is refused unless ``force``).
    """
    meta = dict(meta or {})
    if isinstance(sae, (str, os.PathLike)):
        meta.setdefault("sae", str(sae))
        sae = load_sae(sae, device=getattr(cfg, "device", "cpu") if cfg is not None else "cpu")
    store = activations
    if isinstance(activations, (str, os.PathLike)):
        store = ActivationStore(activations)
        meta["activations"] = str(activations)
    if store is not None:
        for k in ("model", "hook_point"):
            if k in getattr(store, "metadata", {}):
                meta[k] = store.metadata[k]
    if pairs is not None and not isinstance(pairs, Pairs):
        meta.setdefault("pairs", str(pairs))
        pairs = load_pairs(pairs)
    if pairs is not None:
        meta["pairs"] = f"{meta.get('pairs', 'in memory')} ({pairs.n} pairs)"
    if store is None and pairs is None:
        raise ValueError("nothing to analyse: give activations (a store) and/or pairs")
    if Path(out).exists() and not force and any(Path(out).iterdir()):  # before the work
        raise FileExistsError(f"{out} already exists; pass --force to replace it or another --out")
    result = analyze(sae, store=store, pairs=pairs, cfg=cfg or AnalysisConfig(), progress=progress)
    result.meta.update(meta)
    with atomic_dir(out, force=force, what="analysis folder") as stage:
        write_features(result, stage)
        write_summary(result, stage)
        write_report(result, stage, items, layer_sweep, alpha_sweep, title)
    out = Path(out)
    return ReportFiles(
        out / "report.html",
        out / "features.parquet",
        out / "features.csv",
        out / "summary.json",
        result,
    )
