"""A planted retrieval set with known distractor concepts (for demos, notebooks and tests).

Each matched pair ``p`` shares one semantic concept; texts add a textual style concept,
images a visual one, and both sides add strong *distractor* concepts with weights drawn
independently per row (they dominate the cosine but carry nothing about the pair). The
SAE is a :class:`saeprobe.sae.TopKSAE` whose dictionary is set to the planted directions,
so its codes recover the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from saeprobe.sae import SAEConfig, TopKSAE

from .data import ExplorerData, from_pairs


@dataclass
class PlantedSet:
    """``sae``, ``data`` (text queries -> image candidates) and the planted concept ids."""

    sae: object
    data: ExplorerData
    distractors: list[int]
    semantic: list[int]
    textual: list[int]
    visual: list[int]


def planted_retrieval(
    n_pairs: int = 48,
    d: int | None = None,
    n_distractors: int = 2,
    n_style: int = 6,
    distractor_scale: float = 4.0,
    noise: float = 0.01,
    seed: int = 0,
) -> PlantedSet:
    """Build the planted set.

    Parameters
    ----------
    n_pairs : int
        Pairs (queries = candidates = ``n_pairs``).
    d : int | None
        Embedding width (default: the number of concepts, an orthonormal dictionary; a larger
        ``d`` keeps it orthonormal, a smaller one is not allowed).
    n_distractors : int
        Shared strong concepts that hurt retrieval.
    n_style : int
        Textual and visual style concepts (each).
    distractor_scale : float
        Distractor weights are uniform in ``[0.2, distractor_scale]`` per row and concept.
    """

    g = torch.Generator().manual_seed(seed)
    textual = list(range(n_style))
    visual = list(range(n_style, 2 * n_style))
    semantic = list(range(2 * n_style, 2 * n_style + n_pairs))
    distractors = list(range(2 * n_style + n_pairs, 2 * n_style + n_pairs + n_distractors))
    C = 2 * n_style + n_pairs + n_distractors
    d = C if d is None else int(d)
    if d < C:
        raise ValueError(
            f"d={d} is below the number of planted concepts {C}; raise d or lower n_pairs"
        )
    q, _ = torch.linalg.qr(torch.randn(d, C, generator=g))
    D = q.T.contiguous()  # [C, d] orthonormal rows
    sae = TopKSAE(SAEConfig(arch="topk", d_in=d, d_sae=C, k=2 + n_distractors))
    with torch.no_grad():
        sae.W_dec.copy_(D)
        sae.W_enc.copy_(D)
        sae.b_enc.zero_()

    def side(own: list[int]) -> torch.Tensor:
        style = torch.tensor(own)[torch.randint(0, len(own), (n_pairs,), generator=g)]
        w = 0.2 + (distractor_scale - 0.2) * torch.rand(n_pairs, n_distractors, generator=g)
        x = D[semantic] + 0.8 * D[style] + w @ D[distractors]
        return x + noise * torch.randn(n_pairs, d, generator=g)

    image, text = side(visual), side(textual)
    data = from_pairs(
        image,
        text,
        "t2i",
        query_labels=[f"caption {p}" for p in range(n_pairs)],
        candidate_labels=[f"image {p}" for p in range(n_pairs)],
    )
    return PlantedSet(sae, data, distractors, semantic, textual, visual)
