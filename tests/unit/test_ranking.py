"""Tests of saeprobe.ranking: exhaustive chunked top-k and ranking metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from saeprobe.ranking import (
    hits_matrix,
    mrr,
    ndcg_at_k,
    ranking_metrics,
    recall_at_k,
    topk_search,
)

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path


def _brute(q, c, k):
    s = q.double() @ c.double().T
    return torch.topk(s, k, dim=1)


@pytest.mark.parametrize("chunk,qchunk", [(7, 5), (1000, 1000), (1, 3)])
def test_topk_matches_brute_force(chunk, qchunk):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(23, 16, generator=g)
    c = torch.randn(101, 16, generator=g)
    res = topk_search(q, c, 10, chunk_size=chunk, query_chunk_size=qchunk)
    ref_s, ref_i = _brute(q, c, 10)
    assert res.scores.dtype == torch.float32 and res.indices.dtype == torch.long
    assert res.scores.shape == (23, 10)
    torch.testing.assert_close(res.scores.double(), ref_s, atol=1e-5, rtol=1e-5)
    assert torch.equal(res.indices, ref_i)
    # scores are sorted best first
    assert (res.scores[:, :-1] >= res.scores[:, 1:]).all()


def test_topk_half_inputs_fp32_accumulation():
    g = torch.Generator().manual_seed(2)
    q = torch.nn.functional.normalize(torch.randn(8, 64, generator=g), dim=1)
    c = torch.nn.functional.normalize(torch.randn(300, 64, generator=g), dim=1)
    for dt in (torch.float16, torch.bfloat16):
        res = topk_search(q.to(dt), c.to(dt), 5, chunk_size=64)
        assert res.scores.dtype == torch.float32
        ref = q.to(dt).double() @ c.to(dt).double().T
        ref_s, _ = torch.topk(ref, 5, dim=1)
        torch.testing.assert_close(res.scores.double(), ref_s, atol=1e-5, rtol=0)


def test_topk_k_clipped_and_exclude_self():
    x = torch.eye(4) + 0.01 * torch.arange(16.0).view(4, 4)
    res = topk_search(x, x, 10)
    assert res.indices.shape == (4, 4)
    assert torch.equal(res.indices[:, 0], torch.arange(4))  # each row is its own nearest
    res2 = topk_search(x, x, 2, exclude_self=True, chunk_size=3, query_chunk_size=2)
    assert not (res2.indices == torch.arange(4)[:, None]).any()
    s = x @ x.T
    s.fill_diagonal_(-math.inf)
    assert torch.equal(res2.indices, torch.topk(s, 2, dim=1).indices)


def test_topk_bad_inputs():
    with pytest.raises(ValueError, match="query dim 3 != candidate dim 4"):
        topk_search(torch.randn(2, 3), torch.randn(5, 4), 1)
    q = torch.randn(2, 4)
    q[1, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        topk_search(q, torch.randn(5, 4), 2)
    with pytest.raises(ValueError, match="no candidates"):
        topk_search(q, torch.randn(0, 4), 2)


# hand-made ranking: 4 queries, top-5 lists
IDX = torch.tensor(
    [
        [3, 1, 4, 0, 2],  # relevant {1}: first hit at rank 2
        [0, 2, 5, 6, 7],  # relevant {9}: no hit
        [8, 9, 7, 6, 5],  # relevant {8, 6}: hits at ranks 1 and 4
        [1, 2, 3, 4, 5],  # relevant {5, 10}: hit at rank 5
    ]
)
REL = [{1}, {9}, {8, 6}, {5, 10}]


def test_recall_hand_made():
    r = recall_at_k(IDX, REL, ks=(1, 2, 5))
    assert r == {1: 0.25, 2: 0.5, 5: 0.75}
    # the same from a boolean relevance matrix
    mat = np.zeros((4, 11), dtype=bool)
    for q, rel in enumerate(REL):
        mat[q, list(rel)] = True
    assert recall_at_k(IDX, mat, ks=(1, 2, 5)) == r
    assert recall_at_k(IDX, torch.from_numpy(mat), ks=(5,)) == {5: 0.75}
    with pytest.raises(ValueError, match="Recall@10 needs at least 10"):
        recall_at_k(IDX, REL, ks=(10,))


def test_mrr_hand_made():
    assert mrr(IDX, REL) == pytest.approx((1 / 2 + 0 + 1 + 1 / 5) / 4)
    assert mrr(IDX, REL, k=3) == pytest.approx((1 / 2 + 0 + 1 + 0) / 4)


def test_ndcg_hand_made():
    d = 1 / np.log2(np.arange(2, 7))
    q0 = d[1] / d[0]
    q1 = 0.0
    q2 = (d[0] + d[3]) / (d[0] + d[1])
    q3 = d[4] / (d[0] + d[1])
    assert ndcg_at_k(IDX, REL, k=5) == pytest.approx((q0 + q1 + q2 + q3) / 4)
    # graded gains: query 2 has gain 2 for row 6 and 1 for row 8
    graded = [{1: 1.0}, {9: 1.0}, {8: 1.0, 6: 2.0}, {5: 1.0, 10: 1.0}]
    g2 = (1 * d[0] + 2 * d[3]) / (2 * d[0] + 1 * d[1])
    assert ndcg_at_k(IDX, graded, k=5) == pytest.approx((q0 + q1 + g2 + q3) / 4)


def test_empty_queries_and_metrics_bundle():
    rel = [{1}, set(), {8}, {5}]
    assert recall_at_k(IDX, rel, ks=(1,)) == {1: 0.25}
    assert recall_at_k(IDX, rel, ks=(1,), ignore_empty=True) == {1: pytest.approx(1 / 3)}
    m = ranking_metrics(IDX, REL, ks=(1, 5, 10), ndcg_k=5)
    assert set(m) == {"R@1", "R@5", "MRR", "nDCG@5"}
    assert m["R@5"] == 0.75
    h = hits_matrix(IDX, REL)
    assert h.sum() == 4 and h[2, 3] and h[3, 4]


def test_complete_ranking_reports_cutoffs_beyond_k():
    # 3 candidates ranked in full: R@10 = R@3, nDCG@10 = nDCG@3
    idx = torch.tensor([[2, 0, 1], [0, 1, 2]])
    rel = [{1}, {0}]
    partial = ranking_metrics(idx, rel, ks=(1, 10), ndcg_k=10)
    assert set(partial) == {"R@1", "MRR"}
    full = ranking_metrics(idx, rel, ks=(1, 10), ndcg_k=10, complete=True)
    assert full["R@1"] == 0.5 and full["R@10"] == 1.0
    assert full["nDCG@10"] == pytest.approx(ndcg_at_k(idx, rel, k=3))
    assert full["MRR"] == pytest.approx((1 / 3 + 1) / 2)
