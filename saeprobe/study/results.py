"""``results.json`` of a study (format ``saeprobe.study``, version 1; ``docs/study.md``), the
headline table and the findings, stated as measured."""

from __future__ import annotations

import json
import math
from typing import Any

__all__ = ["FORMAT", "VERSION", "check_results", "findings", "headline"]

FORMAT = "saeprobe.study"
VERSION = 1
METHODS = ("base", "realign", "ablated")
KS = ("1", "5", "10")


def _mean(values: list[float]) -> float:
    values = [v for v in values if v is not None and math.isfinite(v)]
    return sum(values) / len(values) if values else float("nan")


def mean_recall(model: dict, method: str, k: str) -> float:
    """Mean Recall@k of ``method`` over the model's tasks."""
    return _mean(
        [
            t["scores"][method][f"R@{k}"]
            for t in model["retrieval"].values()
            if method in t["scores"]
        ]
    )


def recall_rows(results: dict) -> list[tuple[str, str, list[float]]]:
    """``(model, method, [mean Recall@k for k in KS])`` for every method a model was scored
    with: the rows of the headline table."""
    return [
        (name, method, [mean_recall(m, method, k) for k in KS])
        for name, m in results["models"].items()
        for method in METHODS
        if any(method in t["scores"] for t in m["retrieval"].values())
    ]


def findings(models: dict[str, dict]) -> dict[str, Any]:
    """What reproduced, per claim of the paper (measured numbers, no verdict forced).

    ``a``: textual vs visual energy share of each MLLM against each dual encoder;
    ``b``: whether ablating the top-attribution concepts raises Recall@1 / @5;
    ``c``: the ReAlign change of mean Recall@5 per model.
    """
    out: dict[str, Any] = {"a": {}, "b": {}, "c": {}}
    for name, m in models.items():
        share = m["analysis"]["energy_share"]
        out["a"][name] = {
            "kind": m["kind"],
            "textual": share.get("textual"),
            "visual": share.get("visual"),
            "bimodal": share.get("bimodal"),
            "textual_over_visual": bool(share.get("textual", 0) > share.get("visual", 0)),
        }
        base1, base5 = mean_recall(m, "base", "1"), mean_recall(m, "base", "5")
        abl1, abl5 = mean_recall(m, "ablated", "1"), mean_recall(m, "ablated", "5")
        out["b"][name] = {
            "delta_R@1": abl1 - base1,
            "delta_R@5": abl5 - base5,
            "ablation_raises_recall": bool(abl1 > base1 or abl5 > base5),
            "n_ablated": m["analysis"].get("n_ablated"),
        }
        rea5 = mean_recall(m, "realign", "5")
        out["c"][name] = {"delta_R@5": rea5 - base5, "realign_raises_recall": bool(rea5 > base5)}
    return out


def headline(results: dict[str, Any]) -> str:
    """The table printed at the end: Recall@1/5/10 (mean over tasks) per model x method,
    energy shares per model and the top distractors."""
    lines = ["Recall@k (%, mean over tasks)"]
    head = f"{'model':<16} {'method':<9} " + " ".join(f"{'R@' + k:>7}" for k in KS)
    lines += [head, "-" * len(head)]
    for name, method, recalls in recall_rows(results):
        vals = " ".join(f"{100 * r:>7.2f}" for r in recalls)
        lines.append(f"{name:<16} {method:<9} {vals}")
    lines += ["", "energy share of concepts by modality tag (%)"]
    head = f"{'model':<16} {'textual':>8} {'visual':>8} {'bimodal':>8}"
    lines += [head, "-" * len(head)]
    for name, m in results["models"].items():
        s = m["analysis"]["energy_share"]
        vals = " ".join(
            f"{100 * float(s.get(t, 0)):>8.1f}" for t in ("textual", "visual", "bimodal")
        )
        lines.append(f"{name:<16} {vals}")
    lines += ["", "top distractors (highest retrieval attribution)"]
    for name, m in results["models"].items():
        tops = ", ".join(f"#{d['id']} ({d['tag']})" for d in m["analysis"]["top_distractors"][:5])
        lines.append(f"{name:<16} {tops}")
    return "\n".join(lines)


def _check_number(path: str, v: Any, lo: float | None = None, hi: float | None = None) -> None:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
        raise ValueError(f"results.json: {path} = {v!r} is not a finite number")
    if (lo is not None and v < lo) or (hi is not None and v > hi):
        raise ValueError(f"results.json: {path} = {v} is outside [{lo}, {hi}]")


def check_results(results: dict[str, Any]) -> None:
    """Raise ``ValueError`` unless ``results`` follows the schema with finite, in-range numbers."""
    if results.get("format") != FORMAT or results.get("version") != VERSION:
        raise ValueError(f"not a {FORMAT} v{VERSION} results file")
    for key in ("config", "models", "findings", "stages", "sweeps"):
        if key not in results:
            raise ValueError(f"results.json: missing {key!r}")
    for name, m in results["models"].items():
        for tname, t in m["retrieval"].items():
            for method, scores in t["scores"].items():
                for metric, v in scores.items():
                    _check_number(f"models.{name}.retrieval.{tname}.{method}.{metric}", v, 0, 1)
        for tag, v in m["analysis"]["energy_share"].items():
            _check_number(f"models.{name}.analysis.energy_share.{tag}", v, 0, 1)
        for key in ("fvu", "l0", "dead"):
            _check_number(f"models.{name}.sae.{key}", m["sae"][key], 0, None)
    for stage, seconds in results["stages"].items():
        _check_number(f"stages.{stage}", seconds, 0, None)
    for name, m in results["models"].items():
        for j, d in enumerate(m["analysis"]["top_distractors"]):
            if d["modality_score"] is not None:  # None: the concept never fired on the data
                _check_number(
                    f"models.{name}.top_distractors[{j}].modality_score", d["modality_score"], 0, 1
                )
    try:
        json.dumps(results, allow_nan=False)
    except ValueError:
        raise ValueError("results.json: a value is NaN or infinite; use null") from None
