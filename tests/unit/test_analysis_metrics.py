"""Concept metrics against closed forms and dense float64 references."""

from __future__ import annotations

import math

import pytest
import torch

from analysis import (
    ConceptStatsAccumulator,
    TagConfig,
    ablate,
    ablation_sweep,
    bridge_block,
    bridge_concepts,
    bridge_matrix_dense,
    bridge_partners,
    bridge_scores,
    concept_stats,
    modality_tags,
    pairs_from_relevant,
    retrieval_attribution,
    retrieval_attribution_dense,
    similarity_decomposition,
    tag_energy_share,
    to_dense,
    top_distractors,
)
from analysis.codes import decode
from saeprobe._types import Modality

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path

T, IMG, TPL = int(Modality.TEXT), int(Modality.IMAGE), int(Modality.TEMPLATE)


def hand_codes():
    # rows: text (2*c0 + 1*c1), text (4*c0, padding at c3), image (3*c2 + 1*c1), template (1*c3)
    values = torch.tensor([[2.0, 1.0], [4.0, 0.0], [3.0, 1.0], [1.0, 0.0]])
    indices = torch.tensor([[0, 1], [0, 3], [2, 1], [3, 0]])
    modality = torch.tensor([T, T, IMG, TPL])
    return values, indices, modality


def test_stats_closed_form():
    v, i, m = hand_codes()
    st = concept_stats(v, i, m, c=4)
    assert torch.allclose(
        st.energy, torch.tensor([6 / 4, 2 / 4, 3 / 4, 1 / 4], dtype=torch.float64)
    )
    assert torch.allclose(
        st.energy_share, torch.tensor([0.5, 1 / 6, 0.25, 1 / 12], dtype=torch.float64)
    )
    assert torch.allclose(st.frequency, torch.tensor([0.5, 0.5, 0.25, 0.25], dtype=torch.float64))
    assert torch.allclose(st.energy_text, torch.tensor([3.0, 0.5, 0, 0], dtype=torch.float64))
    assert torch.allclose(st.energy_image, torch.tensor([0.0, 1.0, 3.0, 0], dtype=torch.float64))
    s = st.modality_score
    assert s[0] == 1.0 and s[2] == 0.0 and math.isclose(float(s[1]), 1 / 3) and math.isnan(s[3])
    assert st.n_rows == {"template": 1, "text": 2, "image": 1, "system": 0}
    s_img = concept_stats(v, i, m, c=4, convention="image").modality_score
    assert s_img[0] == 0.0 and s_img[2] == 1.0 and math.isclose(float(s_img[1]), 2 / 3)


def test_stats_streaming_equals_one_shot_and_top_inputs():
    g = torch.Generator().manual_seed(1)
    n, k, c = 300, 5, 40
    v = torch.rand(n, k, generator=g)
    i = torch.stack([torch.randperm(c, generator=g)[:k] for _ in range(n)])
    m = torch.randint(0, 4, (n,), generator=g)
    sid = torch.arange(n) // 3  # 3 rows per input
    acc = ConceptStatsAccumulator(c, top_m=3)
    for s in range(0, n, 37):
        acc.update(v[s : s + 37], i[s : s + 37], m[s : s + 37], sid[s : s + 37])
    st = acc.result()
    dense = to_dense(v, i, c).double()
    assert torch.allclose(st.energy, dense.mean(0))
    assert torch.allclose(st.frequency, (dense != 0).double().mean(0))
    assert torch.allclose(st.energy_text, dense[m == T].mean(0))
    assert torch.allclose(st.energy_image, dense[m == IMG].mean(0))
    # top inputs: activation of an input = max over its rows
    per_input = torch.zeros(n // 3, c, dtype=torch.float64).scatter_reduce_(
        0, sid[:, None].expand(-1, c), dense, "amax"
    )
    for concept in range(c):
        vals, ids = torch.topk(per_input[:, concept], 3)
        got = st.top_inputs[concept]
        assert [s for s, _ in got] == ids.tolist()
        assert torch.allclose(
            torch.tensor([a for _, a in got], dtype=torch.float64), vals, atol=1e-6
        )


def test_stats_empty_modality_and_bad_input():
    v, i, m = hand_codes()
    m = torch.tensor([T, T, T, TPL])  # no image rows at all
    with pytest.warns(RuntimeWarning, match="no image rows"):
        st = concept_stats(v, i, m, c=4)
    assert torch.isnan(st.modality_score).all() and torch.isnan(st.energy_image).all()
    tags = modality_tags(st.modality_score, st.energy)
    assert set(tags) == {"unknown"}
    with pytest.raises(ValueError, match="no modality labels"):
        concept_stats(v, i, None, c=4)
    with pytest.raises(ValueError, match="one label per row"):
        concept_stats(v, i, m[:2], c=4)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        concept_stats(v, i, m, c=3)


def test_tags_and_energy_share():
    score = torch.tensor([0.95, 0.05, 0.5, float("nan"), 0.5, 0.91])
    energy = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.0, 2.0])
    tags = modality_tags(score, energy)
    assert tags == ["textual", "visual", "bimodal", "unknown", "dead", "textual"]
    assert modality_tags(score, energy, TagConfig(textual=0.92))[5] == "bimodal"
    # image convention is converted: 0.95 visual-score -> 0.05 textual-score
    assert modality_tags(score, energy, convention="image")[:2] == ["visual", "textual"]
    share = tag_energy_share(tags, energy)
    assert share == pytest.approx(
        {"textual": 0.6, "visual": 0.2, "bimodal": 0.1, "unknown": 0.1, "dead": 0.0}
    )
    with pytest.raises(ValueError, match="thresholds"):
        modality_tags(score, energy, TagConfig(textual=0.1, visual=0.9))
    # bridge: smallest top set with half of the positive mass
    b = torch.tensor([5.0, 3.0, 1.0, 1.0, -2.0])
    assert bridge_concepts(b).tolist() == [True, False, False, False, False]
    assert bridge_concepts(b, TagConfig(bridge_mass=0.8)).tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]
    assert bridge_concepts(b, TagConfig(bridge_mass=1.0, bridge_max=3)).sum() == 3
    assert not bridge_concepts(torch.zeros(3)).any()
    share = tag_energy_share(tags, energy, bridge_concepts(torch.tensor([0, 0, 0, 0, 0, 1.0])))
    assert share["bridge"] == pytest.approx(0.2)


def random_problem(P=24, c=12, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    D = torch.randn(c, d, generator=g, dtype=torch.float64)
    D = D / D.norm(dim=1, keepdim=True)

    def codes():
        v = torch.rand(P, k, generator=g, dtype=torch.float64)
        i = torch.stack([torch.randperm(c, generator=g)[:k] for _ in range(P)])
        v[0, -1] = 0.0  # a padding entry
        return v, i

    return D, codes(), codes()


def test_bridge_closed_form():
    D = torch.eye(3, dtype=torch.float64)
    D[2] = torch.tensor([0.6, 0.8, 0.0])
    img = (torch.tensor([[2.0]]), torch.tensor([[0]]))
    txt = (torch.tensor([[3.0]]), torch.tensor([[2]]))
    r = bridge_scores(img, txt, D)
    # B_02 = 2 * 3 * <d0, d2> = 3.6, everything else 0
    assert r.row.tolist() == pytest.approx([3.6, 0, 0])
    assert r.col.tolist() == pytest.approx([0, 0, 3.6])
    assert r.score.tolist() == pytest.approx([3.6, 0, 3.6])
    assert r.top_pairs.tolist() == [[0, 2]] and r.top_values.tolist() == pytest.approx([3.6])


@pytest.mark.parametrize("n_candidates", [12, 1024])
def test_bridge_sparse_equals_dense(n_candidates):
    D, (vi, ii), (vt, it) = random_problem()
    c = D.shape[0]
    B = bridge_matrix_dense(to_dense(vi, ii, c), to_dense(vt, it, c), D)
    r = bridge_scores(
        (vi, ii), (vt, it), D, n_top_pairs=10, n_candidates=n_candidates, chunk_size=7
    )
    assert torch.allclose(r.row, B.sum(1), atol=1e-5)
    assert torch.allclose(r.col, B.sum(0), atol=1e-5)
    assert torch.allclose(r.score, B.sum(1) + B.sum(0), atol=1e-5)
    vals, flat = torch.topk(B.reshape(-1), 10)
    assert torch.allclose(r.top_values, vals, atol=1e-5)
    assert r.top_pairs.tolist() == torch.stack([flat // c, flat % c], 1).tolist()
    rows, cols = torch.tensor([3, 0, 7]), torch.tensor([1, 11])
    assert torch.allclose(bridge_block((vi, ii), (vt, it), D, rows, cols), B[rows][:, cols])
    sym = B[5] + B[:, 5]
    vals, idx = torch.topk(sym, 4)
    got = bridge_partners(5, (vi, ii), (vt, it), D, n=4, include_self=True)
    assert [j for j, _ in got] == idx.tolist()
    assert [v for _, v in got] == pytest.approx(vals.tolist())
    others = sym.clone()
    others[5] = float("-inf")
    vals, idx = torch.topk(others, 4)
    got = bridge_partners(5, (vi, ii), (vt, it), D, n=4)
    assert 5 not in [j for j, _ in got]
    assert [j for j, _ in got] == idx.tolist()
    assert [v for _, v in got] == pytest.approx(vals.tolist())


def test_bridge_pair_count_mismatch():
    D, (vi, ii), (vt, it) = random_problem()
    with pytest.raises(ValueError, match="as many image rows"):
        bridge_scores((vi, ii), (vt[:-1], it[:-1]), D)


def test_similarity_decomposition_sums_to_cosine():
    D, (vq, iq), (vc, ic) = random_problem(P=16, c=20, d=8, k=4)
    g = torch.Generator().manual_seed(3)
    b = torch.randn(8, dtype=torch.float64, generator=g)
    xq = decode(vq, iq, D) + 0.3 * torch.randn(16, 8, generator=g, dtype=torch.float64) + b
    xc = 5.0 * (decode(vc, ic, D) + 0.3 * torch.randn(16, 8, generator=g, dtype=torch.float64))
    dec = similarity_decomposition(xq, xc, (vq, iq), (vc, ic), D)
    cos = torch.nn.functional.cosine_similarity(xq, xc)
    assert torch.allclose(dec.cosine, cos, atol=1e-12)
    assert (dec.total() - cos).abs().max() < 1e-5
    assert (dec.per_concept(20).sum(1) + dec.cross + dec.error - cos).abs().max() < 1e-5
    # concept terms alone = cosine-scaled reconstruction dot product
    hq, hc = decode(vq, iq, D), decode(vc, ic, D)
    rec = (hq * hc).sum(1) / (xq.norm(dim=1) * xc.norm(dim=1))
    assert torch.allclose(dec.per_concept(20).sum(1), rec, atol=1e-10)
    with pytest.raises(ValueError, match="must both be"):
        similarity_decomposition(xq, xc[:, :4], (vq, iq), (vc, ic), D)


def test_retrieval_attribution_equals_dense_formula():
    D, (vq, iq), (vc, ic) = random_problem(P=30, c=15, d=7, k=3)
    c = 15
    zq, zc = to_dense(vq, iq, c), to_dense(vc, ic, c)
    ref = retrieval_attribution_dense(zq, zc, D)
    a = retrieval_attribution((vq, iq), (vc, ic), D.float(), normalize=False, chunk_size=8)
    assert torch.allclose(a.attribution, ref, atol=1e-5)
    hq, hc = decode(vq, iq, D), decode(vc, ic, D)
    assert a.attribution.sum().item() == pytest.approx(2 * (hq * hc).sum(1).mean().item(), rel=1e-5)
    assert a.mean_reconstructed == pytest.approx(a.attribution.sum().item() / 2, rel=1e-5)
    # normalised attribution = 2 * mean of the per-pair cosine concept terms
    g = torch.Generator().manual_seed(4)
    xq = hq + 0.1 * torch.randn(hq.shape, generator=g, dtype=torch.float64)
    xc = hc + 0.1 * torch.randn(hc.shape, generator=g, dtype=torch.float64)
    an = retrieval_attribution((vq, iq), (vc, ic), D, x_q=xq, x_c=xc)
    dec = similarity_decomposition(xq, xc, (vq, iq), (vc, ic), D)
    assert torch.allclose(an.attribution, 2 * dec.per_concept(c).mean(0), atol=1e-5)
    assert an.mean_similarity == pytest.approx(dec.cosine.mean().item(), abs=1e-6)
    # explicit query-positive pairs
    rel = [{1, 2}, set(), {0}]
    qi, ci = pairs_from_relevant(rel)
    assert qi.tolist() == [0, 0, 2] and ci.tolist() == [1, 2, 0]
    ap = retrieval_attribution((vq, iq), (vc, ic), D, pairs=(qi, ci), normalize=False)
    refp = (zq[qi] * (zc[ci] @ (D @ D.T)) + zc[ci] * (zq[qi] @ (D @ D.T))).mean(0)
    assert torch.allclose(ap.attribution, refp, atol=1e-5)
    assert top_distractors(ref, 3).tolist() == torch.argsort(ref, descending=True)[:3].tolist()


def test_ablation_operators_closed_form():
    D = torch.eye(4, dtype=torch.float32)
    e = torch.tensor([[0.0, 0.0, 0.0, 0.5]])
    x = 2 * D[0:1] + 3 * D[1:2] + e
    codes = (torch.tensor([[2.0, 3.0]]), torch.tensor([[0, 1]]))
    out = ablate(x, codes, D, [0], "subtract")
    ref = torch.tensor([[0.0, 3.0, 0.0, 0.5]])
    assert torch.allclose(out, ref / ref.norm())
    out = ablate(x, codes, D, [0], "zero")
    assert torch.allclose(out, torch.tensor([[0.0, 1.0, 0.0, 0.0]]))
    out = ablate(x, codes, D, [0], "zero", bias=torch.tensor([0.0, 0, 4, 0]))
    assert torch.allclose(out, torch.tensor([[0.0, 0.6, 0.8, 0.0]]))
    # project: remove span of two non-orthogonal directions
    Dn = torch.tensor([[1.0, 1.0, 0, 0], [0, 1.0, 1.0, 0], [0, 0, 0, 1.0]]) / math.sqrt(2)
    x = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    out = ablate(x, None, Dn, [0, 1], "project", normalize=False)
    assert torch.allclose(out @ Dn[:2].T, torch.zeros(1, 2), atol=1e-6)
    # x minus its least-squares fit on span{d0, d1}
    A = Dn[:2].T.double()
    fit = A @ torch.linalg.lstsq(A, x.T.double()).solution
    assert torch.allclose(out.double(), x.double() - fit.T, atol=1e-5)
    with pytest.raises(ValueError, match="unknown ablation method"):
        ablate(x, None, Dn, [0], "drop")
    with pytest.raises(ValueError, match="needs the SAE codes"):
        ablate(x, None, Dn, [0], "subtract")


def test_ablation_sweep_uses_ranking():
    from saeprobe.ranking import recall_at_k, topk_search

    D, (vq, iq), (vc, ic) = random_problem(P=20, c=10, d=10, k=3, seed=5)
    D = torch.eye(10, dtype=torch.float32)
    xq, xc = decode(vq.float(), iq, D), decode(vc.float(), ic, D)
    sw = ablation_sweep(xq, xc, (vq, iq), (vc, ic), D, [3, 1, 4], steps=[0, 1, 3], ks=(1, 5))
    assert sw.n_ablated == [0, 1, 3]
    rel = [{q} for q in range(20)]
    for j, n in enumerate(sw.n_ablated):
        keep = torch.ones(10)
        keep[torch.tensor([3, 1, 4])[:n]] = 0
        q, c = xq * keep, xc * keep
        q = q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)
        c = c / c.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ref = recall_at_k(topk_search(q, c, 5).indices, rel, (1, 5))
        assert sw.recall[1][j] == pytest.approx(ref[1]) and sw.recall[5][j] == pytest.approx(ref[5])
    assert sw.to_dict()["recall"]["1"] == sw.recall[1]


def test_ablation_sweep_query_subset():
    from saeprobe.ranking import recall_at_k, topk_search

    g = torch.Generator().manual_seed(6)
    D = torch.eye(8)
    v, i = torch.rand(15, 2, generator=g), torch.randint(0, 8, (15, 2), generator=g)
    xq = decode(v, i, D) + 0.1 * torch.randn(15, 8, generator=g)
    xc = decode(v, i, D) + 0.1 * torch.randn(15, 8, generator=g)
    rows = torch.tensor([0, 5, 7, 14])
    sw = ablation_sweep(xq, xc, (v, i), (v, i), D, [2], steps=[0, 1], ks=(1,), query_rows=rows)
    assert sw.extra["n_queries"] == 4 and sw.extra["n_candidates"] == 15
    q = ablate(xq[rows], (v[rows], i[rows]), D, [2])
    c = ablate(xc, (v, i), D, [2])
    ref = recall_at_k(topk_search(q, c, 1).indices, [{int(r)} for r in rows], (1,))
    assert sw.recall[1][1] == pytest.approx(ref[1])


def test_paired_decode_dots_equals_gathered_float64():
    from analysis.codes import concept_dots, decode, paired_decode_dots

    torch.manual_seed(3)
    c, d, n, ka, kb = 40, 12, 9, 4, 3
    D = torch.nn.functional.normalize(torch.randn(c, d), dim=1)
    va, ia = torch.rand(n, ka), torch.randint(0, c, (n, ka))
    vb, ib = torch.rand(n, kb), torch.randint(0, c, (n, kb))
    ha, hb, da, db = paired_decode_dots(va, ia, vb, ib, D)
    D64 = D.double()
    ref_a = (va.double()[:, :, None] * D64[ia]).sum(1)
    ref_b = (vb.double()[:, :, None] * D64[ib]).sum(1)
    assert torch.allclose(ha.double(), ref_a, atol=1e-6)
    assert torch.allclose(hb.double(), ref_b, atol=1e-6)
    assert torch.allclose(ha, decode(va, ia, D), atol=1e-6)
    assert torch.allclose(da.double(), torch.einsum("nkd,nd->nk", D64[ia], ref_b), atol=1e-5)
    assert torch.allclose(db.double(), torch.einsum("nkd,nd->nk", D64[ib], ref_a), atol=1e-5)
    assert torch.allclose(da, concept_dots(ia, D, hb), atol=1e-5)
    assert not va.requires_grad and not da.requires_grad
