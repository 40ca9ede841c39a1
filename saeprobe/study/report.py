"""The study's self-contained HTML report (plotly.js inline once: works offline)."""

from __future__ import annotations

import html
from pathlib import Path
from typing import Any

from saeprobe.atomic import atomic_write_text

from .results import KS, METHODS, recall_rows

__all__ = ["write_report"]

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{padding:3px 10px;border-bottom:1px solid #eee;text-align:right}
th:first-child,td:first-child,td:nth-child(2){text-align:left}.finding{margin:.4em 0}
.note{color:#666;font-size:.9em}
"""


def _table(results: dict) -> str:
    rows = ["<tr><th>model</th><th>method</th>" + "".join(f"<th>R@{k}</th>" for k in KS) + "</tr>"]
    for name, method, recalls in recall_rows(results):
        cells = "".join(f"<td>{100 * r:.2f}</td>" for r in recalls)
        rows.append(f"<tr><td>{html.escape(name)}</td><td>{method}</td>{cells}</tr>")
    return "<table>" + "".join(rows) + "</table>"


def _per_task(results: dict) -> str:
    rows = [
        "<tr><th>model</th><th>task</th>" + "".join(f"<th>{m} R@5</th>" for m in METHODS) + "</tr>"
    ]
    for name, m in results["models"].items():
        for tname, t in m["retrieval"].items():
            cells = "".join(
                f"<td>{100 * t['scores'][me]['R@5']:.1f}</td>" if me in t["scores"] else "<td></td>"
                for me in METHODS
            )
            rows.append(
                f"<tr><td>{html.escape(name)}</td><td>{html.escape(tname)} (type {t['task']})</td>{cells}</tr>"
            )
    return "<table>" + "".join(rows) + "</table>"


def _figures(results: dict) -> list[str]:
    import plotly.graph_objects as go

    figs = []
    share = go.Figure()
    for tag in ("textual", "visual", "bimodal"):
        names = list(results["models"])
        share.add_trace(
            go.Bar(
                name=tag,
                x=names,
                y=[
                    100 * results["models"][n]["analysis"]["energy_share"].get(tag, 0)
                    for n in names
                ],
            )
        )
    share.update_layout(
        title="Energy share by concept modality (%)", barmode="group", template="plotly_white"
    )
    figs.append(share)
    alpha = go.Figure()
    for name, sw in results["sweeps"].items():
        a = sw["alpha"]
        alpha.add_trace(
            go.Scatter(
                x=a["x"],
                y=[100 * v for v in a["recall"]["5"]],
                mode="lines+markers",
                name=f"{name} ReAlign",
            )
        )
        alpha.add_hline(
            y=100 * a["baseline"]["R@5"], line_dash="dot", annotation_text=f"{name} base"
        )
    alpha.update_layout(title=f"Recall@5 vs ReAlign alpha ({next(iter(results['sweeps'].values()))['task']})",
                        xaxis_title="alpha", yaxis_title="R@5 (%)", template="plotly_white")  # fmt: skip
    figs.append(alpha)
    layer = go.Figure()
    for name, sw in results["sweeps"].items():
        if "layers" not in sw:
            continue
        ls = sw["layers"]
        for method in ("base", "realign"):
            layer.add_trace(
                go.Scatter(
                    x=ls["x"],
                    y=[100 * v for v in ls[method]["5"]],
                    mode="lines+markers",
                    name=f"{name} {method}",
                )
            )
    if layer.data:
        layer.update_layout(
            title="Recall@5 vs layer", yaxis_title="R@5 (%)", template="plotly_white"
        )
        figs.append(layer)
    return [
        f.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False)
        for i, f in enumerate(figs)
    ]


def _findings(results: dict) -> str:
    f = results["findings"]
    out = []
    for name, a in f["a"].items():
        out.append(
            f"<p class=finding>(a) {html.escape(name)} ({a['kind']}): textual concepts carry "
            f"{100 * (a['textual'] or 0):.1f}% of the energy, visual {100 * (a['visual'] or 0):.1f}%.</p>"
        )
    for name, b in f["b"].items():
        verdict = "raises" if b["ablation_raises_recall"] else "does not raise"
        out.append(
            f"<p class=finding>(b) {html.escape(name)}: ablating the top distractors {verdict} recall "
            f"(mean R@1 {100 * b['delta_R@1']:+.2f}, R@5 {100 * b['delta_R@5']:+.2f} points).</p>"
        )
    for name, c in f["c"].items():
        out.append(
            f"<p class=finding>(c) {html.escape(name)}: ReAlign changes mean R@5 by {100 * c['delta_R@5']:+.2f} points.</p>"
        )
    return "".join(out)


def write_report(results: dict[str, Any], path: str | Path) -> Path:
    """Write the study report to ``path`` (atomically)."""
    stages = "".join(
        f"<tr><td>{html.escape(k)}</td><td>{v:.1f} s</td></tr>"
        for k, v in results["stages"].items()
    )
    links = "".join(
        f'<li><a href="models/{html.escape(n)}/analysis/report.html">{html.escape(n)} concept analysis</a></li>'
        for n in results["models"]
    )
    body = (
        f"<h1>{html.escape(results.get('title', 'saeprobe study'))}</h1>"
        f"<p class=note>{html.escape(results.get('note', ''))}</p>"
        "<h2>Retrieval (mean over tasks)</h2>" + _table(results)
        + "<h2>Per task</h2>" + _per_task(results)
        + "<h2>Findings, as measured</h2>" + _findings(results)
        + "".join(f"<div>{f}</div>" for f in _figures(results))
        + f"<h2>Per model</h2><ul>{links}</ul>"
        + f"<h2>Stage times</h2><table>{stages}</table>"
        + "<p class=note>Explore the run: <code>saeprobe explore RUN_DIR</code></p>"
    )  # fmt: skip
    text = f"<!doctype html><html><head><meta charset=utf-8><title>saeprobe study</title><style>{CSS}</style></head><body>{body}</body></html>"
    return atomic_write_text(path, text, what="study report")
