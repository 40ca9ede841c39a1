"""Retrieval sweeps: ReAlign's alpha sensitivity and per-layer retrieval.

Both return (and the CLI writes) one JSON object in the sweep format read by
the analysis figures (documented in ``docs/retrieval.md``)::

    {"x": [...], "x_name": "alpha" | "layer", "x_labels": [...],
     "method": "realign",
     "recall": {"1": [...], "5": [...], "10": [...]},   # of `method`, one value per x
     "mrr": [...], "ndcg@10": [...],
     "methods": {label: {"recall": {...}, "mrr": [...], "ndcg@10": [...]}},
     "baseline": {"R@1": ..., ...},                     # alpha sweep: the base embedding
     "model": ..., "data": ..., "task": ..., "n_queries": ..., "n_corpus": ...}

Values are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import atomic_write
from .cache import EmbeddingCache
from .config import NATIVE, RetrievalConfig, method_label
from .embedding import task_embeddings, validate_embeddings
from .evaluate import score_methods

logger = logging.getLogger(__name__)

__all__ = ["alpha_sweep", "layer_sweep", "sweep_figure"]


def _series(per_x: list[dict[str, float]], ks: Sequence[int], ndcg_k: int) -> dict[str, Any]:
    return {
        "recall": {str(k): [m[f"R@{k}"] for m in per_x] for k in ks},
        "mrr": [m["MRR"] for m in per_x],
        f"ndcg@{ndcg_k}": [m.get(f"nDCG@{ndcg_k}") for m in per_x],
    }


def _header(adapter: Any, task: Any) -> dict[str, Any]:
    return {
        "model": str(getattr(adapter, "name_or_path", adapter)),
        "data": str(task.path),
        "task": task.task,
        "n_queries": len(task.queries),
        "n_corpus": len(task.corpus),
    }


def alpha_sweep(
    adapter: Any,
    task: Any,
    alphas: Sequence[float],
    config: RetrievalConfig | None = None,
    *,
    cache: EmbeddingCache | str | os.PathLike | None = None,
) -> dict[str, Any] | None:
    """ReAlign recall as a function of the shrinkage alpha (embeds once).

    Returns the sweep JSON (None on ranks other than 0).
    """
    config = config or RetrievalConfig()
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    if not alphas:
        raise ValueError("alpha sweep needs at least one alpha value")
    bad = [a for a in alphas if not 0 <= a <= 1]
    if bad:
        raise ValueError(f"alpha values must lie in [0, 1], got {bad}")
    emb = task_embeddings(
        adapter,
        task,
        layers=[config.layer],
        pool=config.pool,
        batch_size=config.batch_size,
        cache=cache,
    )
    if emb is None:
        return None
    (name,) = emb["query"].keys()
    q = validate_embeddings(emb["query"][name], task.queries.ids, "query")
    c = validate_embeddings(emb["corpus"][name], task.corpus.ids, "candidate")
    rel = task.relevant_rows(graded=task.gains is not None)
    base = score_methods(q, c, rel, config, methods=["none"])["base"]
    per = [
        score_methods(q, c, rel, config, methods=["realign"], alpha=a)["realign"] for a in alphas
    ]
    series = _series(per, config.ks, config.ndcg_k)
    return {
        "x": [float(a) for a in alphas],
        "x_name": "alpha",
        "x_labels": [f"{a:g}" for a in alphas],
        "method": "realign",
        **series,
        "methods": {"realign": series},
        "baseline": base,
        "layer": name,
        **_header(adapter, task),
    }


def layer_sweep(
    adapter: Any,
    task: Any,
    config: RetrievalConfig | None = None,
    *,
    layers: Sequence[int] | None = None,
    include_final_norm: bool = True,
    cache: EmbeddingCache | str | os.PathLike | None = None,
    primary: str = "realign",
) -> dict[str, Any] | None:
    """Retrieval from every layer's residual stream (one forward pass per batch
    captures all of them), for each method of ``config.methods``.

    ``x`` is the layer index (``resid_post.L``); ``final_norm`` gets
    ``x = n_layers`` and the label ``final_norm``.
    """
    config = config or RetrievalConfig()
    if not isinstance(cache, EmbeddingCache):
        cache = EmbeddingCache(cache)
    if getattr(adapter, "is_dual_encoder", False) and (config.pool in (None, NATIVE)):
        raise ValueError(
            "a layer sweep pools hidden states; for a dual encoder pass pool='mean' (each tower's "
            "layers), or sweep an MLLM"
        )
    n_layers = adapter.n_layers
    idx = list(range(n_layers)) if layers is None else [int(i) % n_layers for i in layers]
    points = [f"resid_post.{i}" for i in idx] + (["final_norm"] if include_final_norm else [])
    emb = task_embeddings(
        adapter,
        task,
        layers=points,
        pool=config.pool or "mean",
        batch_size=config.batch_size,
        cache=cache,
    )
    if emb is None:
        return None
    rel = task.relevant_rows(graded=task.gains is not None)
    names = list(emb["query"].keys())
    per_method: dict[str, list[dict[str, float]]] = {method_label(m): [] for m in config.methods}
    for nm in names:
        q = validate_embeddings(emb["query"][nm], task.queries.ids, f"query ({nm})")
        c = validate_embeddings(emb["corpus"][nm], task.corpus.ids, f"candidate ({nm})")
        res = score_methods(q, c, rel, config)
        for label, m in res.items():
            per_method[label].append(m)
    xs = [n_layers if nm == "final_norm" else int(nm.split(".")[1]) for nm in names]
    methods = {label: _series(v, config.ks, config.ndcg_k) for label, v in per_method.items()}
    main = method_label(primary) if method_label(primary) in methods else next(iter(methods))
    return {
        "x": xs,
        "x_name": "layer",
        "x_labels": names,
        "method": main,
        **methods[main],
        "methods": methods,
        **_header(adapter, task),
    }


def sweep_figure(sweep: dict[str, Any], path: str | os.PathLike, *, k: int | None = None) -> Path:
    """Plotly line chart of a sweep (Recall@k per method vs x) as offline HTML."""
    import plotly.graph_objects as go

    ks = sorted(int(x) for x in sweep["recall"])
    fig = go.Figure()
    for label, series in sweep["methods"].items():
        for kk in [k] if k is not None else ks:
            fig.add_trace(
                go.Scatter(
                    x=sweep["x"],
                    y=[100 * v for v in series["recall"][str(kk)]],
                    mode="lines+markers",
                    name=f"{label} R@{kk}",
                    text=sweep.get("x_labels"),
                )
            )
    base = sweep.get("baseline")
    if base:
        for kk in [k] if k is not None else ks:
            if f"R@{kk}" in base:
                fig.add_hline(
                    y=100 * base[f"R@{kk}"],
                    line_dash="dot",
                    annotation_text=f"base R@{kk}",
                )
    title = f"{Path(str(sweep.get('data', ''))).name} (task {sweep.get('task')}): recall vs {sweep['x_name']}"
    fig.update_layout(
        title=title,
        xaxis_title=sweep["x_name"],
        yaxis_title="Recall@k (%)",
        template="plotly_white",
    )
    if sweep["x_name"] == "alpha":
        fig.update_xaxes(
            type="log" if all(x > 0 for x in sweep["x"]) and len(sweep["x"]) > 2 else "linear"
        )
    return atomic_write(
        path,
        lambda tmp: fig.write_html(str(tmp), include_plotlyjs=True, full_html=True),
        what="sweep figure",
    )
