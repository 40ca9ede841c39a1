"""Planted ground truth: textual, visual and shared directions plus a strong shared
direction that hurts retrieval, encoded by a real TopKSAE whose weights are set directly."""

from __future__ import annotations

import pytest
import torch

from analysis import AnalysisConfig, Pairs, analyze, similarity_decomposition
from tests.helpers import dictionary_topk

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path

P, D_MODEL = 24, 64
TEXTUAL = list(range(0, 8))
VISUAL = list(range(8, 16))
SEMANTIC = list(range(16, 16 + P))  # one shared concept per matched pair
HARMFUL = [16 + P, 17 + P]
C = 18 + P


def planted():
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D_MODEL, C, generator=g))
    D = q.T.contiguous()  # [C, d] orthonormal rows
    sae = dictionary_topk(D, k=4)

    def side(own: list[int]) -> torch.Tensor:
        style = torch.tensor(own)[torch.randint(0, len(own), (P,), generator=g)]
        w = 0.2 + 3.8 * torch.rand(P, 2, generator=g)  # strong, uncorrelated with the pair
        x = D[SEMANTIC] + 0.8 * D[style] + w @ D[HARMFUL]
        return x + 0.01 * torch.randn(P, D_MODEL, generator=g)

    return sae, D, Pairs(side(VISUAL), side(TEXTUAL))


def test_planted_ground_truth_is_recovered():
    sae, D, pairs = planted()
    cfg = AnalysisConfig(n_distractors=2, ablation_steps=[0, 1, 2], ks=(1, 5), top_m=3)
    res = analyze(sae, pairs=pairs, cfg=cfg)
    tags = res.tags
    active_textual = [i for i in TEXTUAL if res.stats.energy[i] > 0]
    active_visual = [i for i in VISUAL if res.stats.energy[i] > 0]
    assert len(active_textual) >= 4 and len(active_visual) >= 4
    assert all(tags[i] == "textual" for i in active_textual)
    assert all(tags[i] == "visual" for i in active_visual)
    assert all(tags[i] == "bimodal" for i in SEMANTIC + HARMFUL)
    # the top-attribution concepts are the planted harmful ones
    assert sorted(res.distractors) == sorted(HARMFUL)
    # the harmful shared direction is also the strongest bridge
    assert set(torch.argsort(res.bridge.score, descending=True)[:2].tolist()) == set(HARMFUL)
    assert res.is_bridge[HARMFUL].all()
    # ablating them raises Recall@1 (to perfect retrieval here)
    r1 = res.sweep.recall[1]
    assert r1[0] < 0.5 and r1[-1] == 1.0 and r1[-1] > r1[0]
    # energy shares: the per-tag summary adds up and sees the planted textual share
    share = res.tag_share
    assert sum(
        share[t] for t in ("textual", "visual", "bimodal", "unknown", "dead")
    ) == pytest.approx(1.0)
    e = res.stats.energy
    assert share["textual"] == pytest.approx(float(e[TEXTUAL].sum() / e.sum()), rel=1e-6)
    # per-pair decomposition of the matched cosines: harmful concepts dominate, parts add up
    with torch.no_grad():
        codes_t = sae.encode_sparse(pairs.text_emb)
        codes_i = sae.encode_sparse(pairs.image_emb)
    dec = similarity_decomposition(
        pairs.text_emb.double(), pairs.image_emb.double(), codes_t, codes_i, D.double()
    )
    per = dec.per_concept(C)
    harm, sem = per[:, HARMFUL].sum(1), per[:, SEMANTIC].sum(1)
    assert harm.mean() > 3 * sem.mean() and (harm > sem).double().mean() > 0.8
    cos = torch.nn.functional.cosine_similarity(pairs.text_emb.double(), pairs.image_emb.double())
    assert (dec.total() - cos).abs().max() < 1e-5
