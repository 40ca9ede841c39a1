"""Concept tags (textual / visual / bimodal, bridge) and the energy share per tag."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from saeprobe.jsonconfig import JSONConfig

TAGS = ("textual", "visual", "bimodal", "unknown", "dead")


@dataclass
class TagConfig(JSONConfig):
    """Thresholds for concept tags.

    Scores are in the paper's convention (1 = textual): ``score > textual`` -> textual,
    ``score < visual`` -> visual, otherwise bimodal; NaN score -> unknown; a concept that
    never fires -> dead. Bridge concepts: the smallest set of top bridge-score concepts whose
    positive scores add up to ``bridge_mass`` of the total positive bridge score
    (0.5 = "the concepts carrying half the bridge mass"), optionally at most ``bridge_max``.
    """

    textual: float = 0.9
    visual: float = 0.1
    bridge_mass: float = 0.5
    bridge_max: int | None = None


def text_convention(score: torch.Tensor, convention: str) -> torch.Tensor:
    """Convert a modality score to the paper's convention (1 = textual)."""
    if convention == "text":
        return score
    if convention == "image":
        return 1.0 - score
    raise ValueError(f"modality convention must be 'text' or 'image', got {convention!r}")


def modality_tags(
    modality_score: torch.Tensor,
    energy: torch.Tensor | None = None,
    cfg: TagConfig | None = None,
    convention: str = "text",
) -> list[str]:
    """Tag per concept: textual / visual / bimodal / unknown (NaN score) / dead (energy 0)."""
    cfg = cfg or TagConfig()
    if not 0.0 <= cfg.visual <= cfg.textual <= 1.0:
        raise ValueError(
            f"tag thresholds need 0 <= visual ({cfg.visual}) <= textual ({cfg.textual}) <= 1"
        )
    s = text_convention(modality_score.double(), convention)
    out = []
    en = energy.tolist() if energy is not None else [1.0] * len(s)
    for v, e in zip(s.tolist(), en):
        if e == 0:
            out.append("dead")
        elif math.isnan(v):
            out.append("unknown")
        elif v > cfg.textual:
            out.append("textual")
        elif v < cfg.visual:
            out.append("visual")
        else:
            out.append("bimodal")
    return out


def bridge_concepts(bridge_score: torch.Tensor, cfg: TagConfig | None = None) -> torch.Tensor:
    """Boolean ``[c]`` mask of bridge concepts (see :class:`TagConfig`)."""
    cfg = cfg or TagConfig()
    s = torch.nan_to_num(bridge_score.double(), nan=0.0)
    mask = torch.zeros(s.shape[0], dtype=torch.bool)
    pos = s.clamp(min=0)
    total = float(pos.sum())
    if total <= 0:
        return mask
    order = torch.argsort(pos, descending=True, stable=True)
    cum = torch.cumsum(pos[order], 0) / total
    n = int((cum < cfg.bridge_mass - 1e-12).sum()) + 1
    n = min(n, int((pos > 0).sum()))
    if cfg.bridge_max is not None:
        n = min(n, cfg.bridge_max)
    mask[order[:n]] = True
    return mask


def tag_energy_share(
    tags: list[str], energy: torch.Tensor, is_bridge: torch.Tensor | None = None
) -> dict[str, float]:
    """Energy share per tag (sums to 1 over TAGS); plus ``"bridge"`` (overlapping) if given.

    ``share["textual"]`` is the paper's "dominated by textual semantics" claim as a number.
    """
    e = energy.double()
    total = float(e.sum())
    out = {t: 0.0 for t in TAGS}
    if total <= 0:
        return out
    for t in TAGS:
        m = torch.tensor([x == t for x in tags], dtype=torch.bool)
        out[t] = float(e[m].sum()) / total
    if is_bridge is not None:
        out["bridge"] = float(e[is_bridge].sum()) / total
    return out


def tag_counts(tags: list[str], is_bridge: torch.Tensor | None = None) -> dict[str, int]:
    out = {t: sum(1 for x in tags if x == t) for t in TAGS}
    if is_bridge is not None:
        out["bridge"] = int(is_bridge.sum())
    return out
