"""Self-contained HTML report of an analysis (plotly.js embedded inline: works offline)."""

from __future__ import annotations

import html
import json
import logging
import math
import os
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import torch

from saeprobe.atomic import atomic_write_text

from . import figures
from .bridge import bridge_block, bridge_partners
from .cards import FeatureCard, ItemLookup, build_card
from .pipeline import AnalysisResult

logger = logging.getLogger(__name__)

CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{margin-bottom:0}.sub{color:#666}
table.summary td,table.summary th,table.stats td,table.stats th{padding:2px 10px;text-align:left}
.figure{margin:1.5em 0;border:1px solid #eee}
.cards{display:flex;flex-wrap:wrap;gap:12px}
.card{border:1px solid #ddd;border-radius:6px;padding:8px;width:360px}
.card h3{margin:0 0 6px 0;font-size:1em}
.tag,.flag{font-size:.8em;padding:1px 6px;border-radius:8px;margin-left:6px;background:#eee}
.tag.textual{background:#cfe2f3}.tag.visual{background:#fde0c5}.tag.bimodal{background:#d4edda}
.flag.distractor{background:#f8d7da}.flag.bridge{background:#e2d9f3}
.tops{display:flex;flex-wrap:wrap;gap:6px}.top{width:110px;font-size:.75em}
.top img{max-width:96px;display:block}.txt{max-height:5em;overflow:hidden}
"""


def select_card_concepts(result: AnalysisResult, n_each: int = 4) -> list[int]:
    """Concepts worth a card: top energy, top distractors, top bridge, top per modality tag."""
    chosen: list[int] = []

    def add(ids):
        for i in ids:
            i = int(i)
            if i not in chosen:
                chosen.append(i)

    e = result.stats.energy
    add(torch.argsort(e, descending=True)[:n_each].tolist())
    add(result.distractors[:n_each])
    if result.bridge is not None:
        add(torch.argsort(result.bridge.score, descending=True)[:n_each].tolist())
    for tag in ("textual", "visual"):
        ids = [i for i in torch.argsort(e, descending=True).tolist() if result.tags[i] == tag]
        add(ids[:2])
    return [i for i in chosen if float(e[i]) > 0 or i in result.distractors]


def build_cards(
    result: AnalysisResult,
    concepts: list[int] | None = None,
    items: ItemLookup = None,
    n_partners: int = 5,
) -> list[FeatureCard]:
    """Feature cards for ``concepts`` (default :func:`select_card_concepts`)."""
    concepts = concepts if concepts is not None else select_card_concepts(result)
    feats = result.features()
    dset = set(result.distractors)
    cards = []
    for i in concepts:
        stats = {
            k: feats[k][i]
            for k in (
                "energy",
                "energy_share",
                "frequency",
                "modality_score",
                "energy_text",
                "energy_image",
                "bridge_score",
                "attribution",
            )
        }
        partners = []
        if result.pair_codes is not None and result.bridge is not None:
            partners = bridge_partners(i, *result.pair_codes, result.dictionary, n_partners)
        cards.append(
            build_card(
                i,
                stats,
                result.tags[i],
                result.stats.top_inputs.get(i, []),
                items,
                partners,
                bool(result.is_bridge[i]),
                i in dset,
            )
        )
    return cards


def report_figures(
    result: AnalysisResult,
    layer_sweep: Any = None,
    alpha_sweep: Any = None,
    n_heatmap: int = 20,
) -> list[tuple[str, go.Figure]]:
    """``(id, figure)`` for every figure the data allows."""
    st = result.stats
    out = [
        (
            "energy-vs-modality",
            figures.energy_vs_modality(
                st.energy, st.modality_score, st.frequency, result.tags, st.modality_convention
            ),
        ),
        ("energy-share", figures.energy_share_per_tag(result.tag_share)),
    ]
    if result.bridge is not None and result.pair_codes is not None:
        top = torch.argsort(result.bridge.score, descending=True)[:n_heatmap]
        block = bridge_block(*result.pair_codes, result.dictionary, top, top)
        out.append(("bridge-heatmap", figures.bridge_heatmap(block, top.tolist(), top.tolist())))
    if result.attribution is not None:
        out.append(
            (
                "attribution",
                figures.attribution_sorted(
                    result.attribution.attribution, result.distractors, tags=result.tags
                ),
            )
        )
    if result.sweep is not None:
        out.append(
            (
                "ablation-sweep",
                figures.recall_curve(
                    result.sweep.to_dict(),
                    f"Recall@k vs number of ablated concepts ({result.sweep.method})",
                ),
            )
        )
    if layer_sweep is not None:
        out.append(
            ("recall-vs-layer", figures.recall_curve(layer_sweep, "Recall@k vs layer", "layer"))
        )
    if alpha_sweep is not None:
        out.append(
            (
                "recall-vs-alpha",
                figures.recall_curve(alpha_sweep, "Recall@k vs whitening alpha", "alpha"),
            )
        )
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return html.escape(str(v))


def render_report(
    result: AnalysisResult,
    cards: list[FeatureCard] | None = None,
    layer_sweep: Any = None,
    alpha_sweep: Any = None,
    title: str = "saeprobe concept analysis",
) -> str:
    """The report as one HTML string (plotly.js inline, no network access needed)."""
    from plotly.offline import get_plotlyjs

    figs = report_figures(result, layer_sweep, alpha_sweep)
    parts = []
    for fid, fig in figs:
        parts.append(
            f"<div class='figure' data-figure='{fid}'>"
            + fig.to_html(
                full_html=False,
                include_plotlyjs=False,
                div_id=f"fig-{fid}",
                config={"displaylogo": False},
            )
            + "</div>"
        )
    summ = result.summary()
    share = result.tag_share
    conv = (
        "1 = textual: E_tau / (E_iota + E_tau) (the paper's)"
        if result.stats.modality_convention == "text"
        else "1 = visual: E_iota / (E_iota + E_tau) (Papadimitriou et al.)"
    )
    rows = [
        ("concepts (c)", result.c),
        ("rows per label", ", ".join(f"{k}={v:,}" for k, v in result.stats.n_rows.items())),
        ("modality score convention", conv),
        ("textual energy share", f"{100 * share.get('textual', float('nan')):.1f}%"),
        ("visual energy share", f"{100 * share.get('visual', float('nan')):.1f}%"),
        ("bimodal energy share", f"{100 * share.get('bimodal', float('nan')):.1f}%"),
    ]
    if "bridge" in share:
        rows.append(("bridge concepts' energy share", f"{100 * share['bridge']:.1f}%"))
    if result.attribution is not None:
        rows.append(("pairs", result.attribution.n_pairs))
        rows.append(("mean matched-pair cosine", result.attribution.mean_similarity))
        rows.append(("distractors (highest attribution)", ", ".join(map(str, result.distractors))))
    if result.sweep is not None:
        for k, v in result.sweep.recall.items():
            rows.append((f"Recall@{k}: none ablated -> best", f"{v[0]:.3f} -> {max(v):.3f}"))
    for k, v in result.meta.items():
        rows.append((k, v))
    table = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{_fmt(v)}</td></tr>" for k, v in rows)
    card_html = "".join(c.to_html() for c in (cards or []))
    data = json.dumps({"summary": {k: v for k, v in summ.items() if k != "ablation"}}, default=str)
    data = data.replace("NaN", "null").replace("</", "<\\/")
    return (
        "<!DOCTYPE html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>{CSS}</style>"
        f"<script type='text/javascript'>{get_plotlyjs()}</script></head><body>"
        f"<h1>{html.escape(title)}</h1><p class='sub'>Generated by saeprobe analyze.</p>"
        f"<h2>Summary</h2><table class='summary'>{table}</table>"
        f"<h2>Figures</h2>{''.join(parts)}"
        f"<h2>Feature cards</h2><div class='cards'>{card_html or '<em>none</em>'}</div>"
        f"<script type='application/json' id='summary-data'>{data}</script>"
        "</body></html>"
    )


def write_report(
    result: AnalysisResult,
    out_dir: str | os.PathLike,
    items: ItemLookup = None,
    layer_sweep: Any = None,
    alpha_sweep: Any = None,
    title: str = "saeprobe concept analysis",
) -> Path:
    """Write ``report.html`` into ``out_dir`` atomically and return its path."""
    cards = build_cards(result, items=items)
    text = render_report(result, cards, layer_sweep, alpha_sweep, title)
    return atomic_write_text(Path(out_dir) / "report.html", text, what="report")
