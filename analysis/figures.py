"""Plotly figures of the concept analysis.

Sweep inputs (Recall@k vs layer, vs whitening alpha, vs ablated concepts) share one JSON
format, a *series*::

    {"x": [0, 1, 2], "recall": {"1": [...], "5": [...]}, "xlabel": "layer", "name": "Qwen2-VL"}

or several series: ``{"series": [series, ...], "xlabel": "..."}`` (recall keys are k as
strings or ints; recall values in [0, 1]). :func:`load_sweep` accepts a path, a JSON string
or a dict.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

TAG_COLORS = {
    "textual": "#1f77b4",
    "visual": "#ff7f0e",
    "bimodal": "#2ca02c",
    "unknown": "#7f7f7f",
    "dead": "#c7c7c7",
    "bridge": "#9467bd",
}


def _layout(fig: go.Figure, title: str, x: str, y: str) -> go.Figure:
    fig.update_layout(
        title=title,
        xaxis_title=x,
        yaxis_title=y,
        template="plotly_white",
        height=420,
        margin=dict(l=60, r=20, t=50, b=50),
    )
    return fig


def energy_vs_modality(
    energy: torch.Tensor,
    modality_score: torch.Tensor,
    frequency: torch.Tensor,
    tags: list[str],
    convention: str = "text",
    max_points: int = 5000,
) -> go.Figure:
    """Scatter: modality score (x) vs energy (y, log), colour = tag, size = frequency.

    At most ``max_points`` concepts (the most energetic) are drawn; dead / NaN ones are left out.
    """
    e = energy.double()
    s = modality_score.double()
    ok = (e > 0) & ~torch.isnan(s)
    idx = torch.nonzero(ok).reshape(-1)
    if len(idx) > max_points:
        idx = idx[torch.argsort(e[idx], descending=True)[:max_points]]
    fmax = float(frequency[idx].max()) if len(idx) else 1.0
    fig = go.Figure()
    for tag in ("textual", "visual", "bimodal"):
        sel = [int(i) for i in idx.tolist() if tags[i] == tag]
        fig.add_trace(
            go.Scatter(
                x=[float(s[i]) for i in sel],
                y=[float(e[i]) for i in sel],
                mode="markers",
                name=f"{tag} ({len(sel)})",
                marker=dict(
                    color=TAG_COLORS[tag],
                    size=[
                        4 + 16 * math.sqrt(float(frequency[i]) / fmax) if fmax > 0 else 4
                        for i in sel
                    ],
                    opacity=0.7,
                ),
                text=[f"concept {i}" for i in sel],
                hovertemplate="%{text}<br>score %{x:.3f}<br>energy %{y:.3g}<extra></extra>",
            )
        )
    one = "textual" if convention == "text" else "visual"
    _layout(fig, "Concept energy vs modality score", f"modality score (1 = {one})", "energy E[z_i]")
    fig.update_yaxes(type="log")
    return fig


def energy_share_per_tag(share: dict[str, float]) -> go.Figure:
    """Bar chart of the energy share per tag (``bridge`` overlaps the others)."""
    keys = [k for k in ("textual", "visual", "bimodal", "unknown", "dead", "bridge") if k in share]
    fig = go.Figure(
        go.Bar(
            x=keys,
            y=[share[k] for k in keys],
            marker_color=[TAG_COLORS[k] for k in keys],
            text=[f"{100 * share[k]:.1f}%" for k in keys],
            textposition="outside",
        )
    )
    _layout(fig, "Energy share per tag", "tag", "share of total energy")
    fig.update_yaxes(range=[0, 1.1])
    return fig


def bridge_heatmap(block: torch.Tensor, rows: list[int], cols: list[int]) -> go.Figure:
    """Heatmap of ``B`` restricted to the top concepts (rows: image side, columns: text side)."""
    fig = go.Figure(
        go.Heatmap(
            z=block.double().tolist(),
            x=[f"c{j}" for j in cols],
            y=[f"c{i}" for i in rows],
            colorscale="RdBu",
            zmid=0,
            colorbar=dict(title="B_ij"),
        )
    )
    _layout(
        fig, "Bridge matrix of the top bridge concepts", "text-side concept", "image-side concept"
    )
    fig.update_xaxes(type="category")
    fig.update_yaxes(type="category", autorange="reversed")
    return fig


def attribution_sorted(
    attribution: torch.Tensor, distractors: list[int], n: int = 50, tags: list[str] | None = None
) -> go.Figure:
    """Bar chart of the ``n`` concepts with the highest attribution; distractors in red."""
    a = torch.nan_to_num(attribution.double(), nan=float("-inf"))
    order = torch.argsort(a, descending=True)[: min(n, a.shape[0])].tolist()
    dset = set(int(i) for i in distractors)
    fig = go.Figure(
        go.Bar(
            x=[f"c{i}" for i in order],
            y=[float(attribution[i]) for i in order],
            marker_color=["#d62728" if i in dset else "#7f7f7f" for i in order],
            text=[tags[i] if tags else "" for i in order],
            hovertemplate="%{x}<br>A = %{y:.4g}<br>%{text}<extra></extra>",
        )
    )
    _layout(fig, "Retrieval attribution (red: distractors)", "concept (sorted)", "attribution A_i")
    fig.update_xaxes(type="category")
    return fig


def load_sweep(obj: Any) -> list[dict]:
    """Normalise a sweep (path, JSON string or dict) to a list of series
    ``{"name", "x", "recall": {int k: list}, "xlabel"}``; raises on a malformed input.

    Also reads the retrieval sweeps' output (:mod:`saeprobe.sweeps`): ``x_name`` is the axis
    label and each entry of ``methods`` (``{label: {"recall": ...}}``) becomes a series.
    """
    if isinstance(obj, (str, Path)):
        p = Path(obj)
        if p.suffix == ".json" or p.exists():
            obj = json.loads(p.read_text())
        else:
            obj = json.loads(str(obj))
    if not isinstance(obj, dict):
        raise ValueError('a sweep must be {"x": [...], "recall": {k: [...]}} or {"series": [...]}')
    series = obj.get("series")
    if series is None and isinstance(obj.get("methods"), dict) and obj["methods"] and "x" in obj:
        series = [
            {"name": label, "x": obj["x"], "recall": m.get("recall")}
            for label, m in obj["methods"].items()
            if isinstance(m, dict)
        ]
    if series is None:
        series = [obj]
    top_label = obj.get("xlabel") or obj.get("x_name") or "x"
    out = []
    for i, s in enumerate(series):
        if "x" not in s or not isinstance(s.get("recall"), dict):
            raise ValueError(
                f'sweep series {i} needs "x": [...] and "recall": {{k: [...]}}; got keys {sorted(s)}'
            )
        rec = {
            int(k): [float("nan") if v is None else float(v) for v in vals]
            for k, vals in s["recall"].items()
        }
        for k, vals in rec.items():
            if len(vals) != len(s["x"]):
                raise ValueError(
                    f"sweep series {i}: recall@{k} has {len(vals)} values for {len(s['x'])} x"
                )
        out.append(
            {
                "name": s.get("name") or obj.get("name") or "",
                "x": list(s["x"]),
                "recall": rec,
                "xlabel": s.get("xlabel") or s.get("x_name") or top_label,
            }
        )
    return out


def recall_curve(
    sweep: Any, title: str, xlabel: str | None = None, log_x: bool = False
) -> go.Figure:
    """Recall@k lines over a sweep (see the module docstring for the input format)."""
    series = load_sweep(sweep)
    fig = go.Figure()
    for s in series:
        for k, vals in sorted(s["recall"].items()):
            name = f"{s['name']} R@{k}" if s["name"] else f"R@{k}"
            fig.add_trace(go.Scatter(x=s["x"], y=vals, mode="lines+markers", name=name))
    _layout(fig, title, xlabel or series[0]["xlabel"], "Recall@k")
    if log_x:
        fig.update_xaxes(type="log")
    return fig
