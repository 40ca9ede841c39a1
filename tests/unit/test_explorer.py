"""Explorer: session logic against direct computation, the data format, the HTTP API on
127.0.0.1, the CLI wiring and the notebook (executed cell by cell)."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request

import pytest
import torch

from analysis import ablate, ablation_sweep, pairs_from_relevant, retrieval_attribution
from saeprobe.explorer import (
    ExplorerData,
    ExplorerSession,
    load_data,
    planted_retrieval,
    save_data,
    serve_in_thread,
)
from saeprobe.ranking import ranking_metrics, topk_search
from saeprobe.whitening import realign

# one intra-op thread: on a shared, oversubscribed CPU, OpenMP barriers make tiny ops take
# milliseconds with 2 threads
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def planted():
    """The planted retrieval problem of this module (``session`` is built on it)."""
    return planted_retrieval(n_pairs=40, seed=3)


def direct_metrics(q: torch.Tensor, c: torch.Tensor, relevant, ks=(1, 5, 10)) -> dict:
    """Reference: float64 cosine ranking of unit rows, metrics from saeprobe.ranking."""
    q64 = q.double() / q.double().norm(dim=1, keepdim=True)
    c64 = c.double() / c.double().norm(dim=1, keepdim=True)
    top = topk_search(q64, c64, 10)
    m = ranking_metrics(top.indices, relevant, ks)
    scores = q64 @ c64.T
    ranks = []
    for i, rel in enumerate(relevant):
        best = max(scores[i, j] for j in rel)
        ranks.append(int((scores[i] > best).sum()) + 1)
    return {"R@1": m["R@1"], "R@5": m["R@5"], "R@10": m["R@10"], "MRR": m["MRR"], "ranks": ranks}


def direct_embeddings(pl, S, op, sides="both"):
    D = pl.sae.dictionary.detach()
    with torch.no_grad():
        cq, cc = pl.sae.encode_sparse(pl.data.queries), pl.sae.encode_sparse(pl.data.candidates)
    q = ablate(pl.data.queries, cq, D, S, op) if sides != "candidate" else pl.data.queries
    c = ablate(pl.data.candidates, cc, D, S, op) if sides != "query" else pl.data.candidates
    return q, c


# ------------------------------------------------------------------ session logic
def test_ablating_nothing_equals_baseline(session, planted):
    ref = direct_metrics(planted.data.queries, planted.data.candidates, planted.data.relevant)
    res = session.evaluate([])
    for key in ("R@1", "R@5", "R@10", "MRR"):
        assert res.metrics[key] == pytest.approx(ref[key], abs=1e-12)
        assert session.baseline[key] == res.metrics[key]
    assert res.ranks.tolist() == ref["ranks"]
    assert res.to_dict()["delta"]["R@1"] == 0.0
    # project with nothing to project is the identity too
    assert session.evaluate([], op="project").metrics == res.metrics


@pytest.mark.parametrize("op", ["subtract", "zero", "project"])
@pytest.mark.parametrize("sides", ["both", "query"])
def test_fast_path_matches_direct_ablation(planted, session, op, sides):
    S = [planted.distractors[0], planted.semantic[0], planted.semantic[5], planted.textual[1]]
    q, c = direct_embeddings(planted, S, op, sides)
    ref = direct_metrics(q, c, planted.data.relevant)
    res = session.evaluate(S, op, sides=sides)
    assert res.path == "fast"
    for key in ("R@1", "R@5", "R@10", "MRR"):
        assert res.metrics[key] == pytest.approx(ref[key], abs=1e-12), key
    assert res.ranks.tolist() == ref["ranks"]
    # the per-query scores equal the float64 cosines of the ablated embeddings
    qi = 7
    view = session.query(qi, S, op, sides=sides)
    cos = (q[qi].double() / q[qi].double().norm()) @ (
        c.double() / c.double().norm(dim=1, keepdim=True)
    ).T
    for item in view["after"]["top"]:
        assert item["score"] == pytest.approx(float(cos[item["index"]]), abs=2e-5)
    assert view["after"]["rank"] == ref["ranks"][qi]
    # the direct path (no cached Gram matrix) gives the same answer
    direct = ExplorerSession(planted.sae, planted.data, max_dense_scores=0)
    res2 = direct.evaluate(S, op, sides=sides)
    assert res2.path == "direct" and res2.metrics == pytest.approx(res.metrics, abs=1e-12)


@pytest.mark.parametrize("op", ["subtract", "zero", "project"])
def test_fast_path_with_decoder_bias_and_several_relevant(op):
    """A random SAE with a decoder bias, a non-orthogonal dictionary and 1-3 relevant
    candidates per query: the Gram-update path equals the direct float64 computation."""
    from saeprobe.sae import SAEConfig, TopKSAE

    g = torch.Generator().manual_seed(5)
    d, Q, N = 24, 30, 50
    sae = TopKSAE(SAEConfig(arch="topk", d_in=d, d_sae=64, k=6, use_decoder_bias=True))
    with torch.no_grad():
        sae.b_dec.copy_(0.3 * torch.randn(d, generator=g))
    cand = torch.randn(N, d, generator=g) + 1.5
    queries = cand[torch.arange(Q)] + 0.8 * torch.randn(Q, d, generator=g)
    relevant = [
        {i}
        | set(
            torch.randint(
                0, N, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g
            ).tolist()
        )
        for i in range(Q)
    ]
    data = ExplorerData(queries, cand, relevant)
    s = ExplorerSession(sae, data)
    S = s.ranking[:5].tolist()
    with torch.no_grad():
        cq, cc = sae.encode_sparse(queries), sae.encode_sparse(cand)
    D, b = sae.dictionary.detach(), sae.b_dec.detach()
    q = ablate(queries, cq, D, S, op, bias=b)
    c = ablate(cand, cc, D, S, op, bias=b)
    ref = direct_metrics(q, c, relevant)
    res = s.evaluate(S, op)
    assert res.path == "fast"
    for key in ("R@1", "R@5", "R@10", "MRR"):
        assert res.metrics[key] == pytest.approx(ref[key], abs=1e-12), key
    assert res.ranks.tolist() == ref["ranks"]


def test_ablating_planted_distractors_raises_recall(planted, session):
    # attribution ranks the planted distractors first (same numbers as analysis computes)
    assert sorted(session.ranking[: len(planted.distractors)].tolist()) == sorted(
        planted.distractors
    )
    qi, ci = pairs_from_relevant(planted.data.relevant)
    with torch.no_grad():
        cq, cc = (
            planted.sae.encode_sparse(planted.data.queries),
            planted.sae.encode_sparse(planted.data.candidates),
        )
    att = retrieval_attribution(
        cq,
        cc,
        planted.sae.dictionary.detach(),
        pairs=(qi, ci),
        x_q=planted.data.queries,
        x_c=planted.data.candidates,
    )
    assert torch.allclose(session.attribution, att.attribution, atol=1e-5)
    base = session.baseline["R@1"]
    after = session.evaluate(planted.distractors).metrics["R@1"]
    assert base < 0.7 and after == 1.0
    feats = session.features(limit=5)
    assert [f["id"] for f in feats[:2]] == session.ranking[:2].tolist()
    assert all(a["attribution"] >= b["attribution"] for a, b in zip(feats, feats[1:]))
    # the sweep equals analysis.ablation_sweep on the same ranking
    sw = session.sweep("subtract", n_max=8)
    ref = ablation_sweep(
        planted.data.queries,
        planted.data.candidates,
        cq,
        cc,
        planted.sae.dictionary.detach(),
        session.ranking[:8],
        planted.data.relevant,
        steps=sw["x"],
    )
    for k in (1, 5, 10):
        assert sw["recall"][str(k)] == pytest.approx(ref.recall[k], abs=1e-12)
    assert sw["recall"]["1"][0] == base and max(sw["recall"]["1"]) == 1.0


def test_whitening_equals_realign(planted, session):
    S = planted.distractors[:1]
    for alpha in (0.1, 0.5):
        q, c = session.embeddings(S, "subtract", "realign", alpha)
        aq, ac = direct_embeddings(planted, S, "subtract")
        assert torch.allclose(q, realign(aq, alpha=alpha), atol=1e-6)
        assert torch.allclose(c, realign(ac, alpha=alpha), atol=1e-6)
        res = session.evaluate(S, "subtract", "realign", alpha)
        assert res.path == "direct"
        top = topk_search(realign(aq, alpha=alpha), realign(ac, alpha=alpha), 10)
        ref = ranking_metrics(top.indices, planted.data.relevant, (1, 5, 10))
        for key in ("R@1", "R@5", "R@10", "MRR"):
            assert res.metrics[key] == pytest.approx(ref[key], abs=1e-12)
    # ReAlign alone (no ablation) already helps on the planted set: the distractors dominate
    # the covariance and whitening shrinks them
    assert (
        session.evaluate([], whiten="realign", alpha=0.1).metrics["R@1"] > session.baseline["R@1"]
    )


def test_bad_settings_raise_clear_errors(session):
    with pytest.raises(ValueError, match="unknown ablation op"):
        session.evaluate([1], "erase")
    with pytest.raises(ValueError, match=r"feature ids must lie in \[0, "):
        session.evaluate([10**6])
    with pytest.raises(ValueError, match="alpha must lie in"):
        session.evaluate([], whiten="realign", alpha=3)
    with pytest.raises(ValueError, match="outside"):
        session.query(10**6)
    wrong = ExplorerData(torch.randn(3, 5), torch.randn(4, 5), [{0}, {1}, {2}])
    with pytest.raises(ValueError, match="SAE expects d_in"):
        ExplorerSession(session_sae(session), wrong)


def session_sae(session):
    from saeprobe.sae import SAEConfig, TopKSAE

    return TopKSAE(SAEConfig(arch="topk", d_in=session.data.d, d_sae=8, k=2))


def test_fast_path_speed_1k_by_10k():
    """1k queries x 10k candidates: an ablation answers in < 1 s on CPU (cached Gram update)."""
    torch.manual_seed(0)
    from saeprobe.sae import SAEConfig, TopKSAE

    d, Q, N = 32, 1000, 10000
    sae = TopKSAE(SAEConfig(arch="topk", d_in=d, d_sae=256, k=8))
    cand = torch.randn(N, d)
    data = ExplorerData(cand[:Q] + 0.7 * torch.randn(Q, d), cand, [{i} for i in range(Q)])
    s = ExplorerSession(sae, data)
    S = s.ranking[:16].tolist()
    t0 = time.perf_counter()
    res = s.evaluate(S, "subtract")
    elapsed = time.perf_counter() - t0
    assert res.path == "fast" and elapsed < 1.0, elapsed
    # spot check against the direct path on a few queries
    q, c = s.embeddings(S, "subtract")
    rows = torch.arange(0, Q, 97)
    ref = topk_search(q[rows], c, 1).indices[:, 0]
    assert torch.equal(res.top[rows, 0], ref)


# ------------------------------------------------------------------ data format
def test_data_roundtrip_and_formats(tmp_path, planted):
    from analysis import save_pairs

    d = planted.data
    rel = [set() if i == 3 else {i, (i + 1) % d.n_candidates} for i in range(d.n_queries)]
    path = save_data(
        tmp_path / "emb.safetensors",
        d.queries,
        d.candidates,
        rel,
        query_labels=d.query_labels,
        candidate_labels=d.candidate_labels,
        query_modality="text",
        candidate_modality="image",
    )
    back = load_data(path)
    assert torch.equal(back.queries, d.queries) and torch.equal(back.candidates, d.candidates)
    assert back.relevant == rel and back.query_labels == d.query_labels
    assert back.query_modality == "text" and back.candidate_modality == "image"
    # sidecar qrels JSON overrides
    qrels = tmp_path / "qrels.json"
    qrels.write_text(json.dumps({"0": [5], "2": 7}))
    alt = load_data(path, qrels=qrels)
    assert alt.relevant[0] == {5} and alt.relevant[2] == {7} and alt.relevant[1] == set()
    # the analysis pairs file: text queries -> images (t2i) or the reverse
    pp = save_pairs(tmp_path / "pairs.safetensors", d.candidates, d.queries)
    t2i, i2t = load_data(pp), load_data(pp, direction="i2t")
    assert torch.equal(t2i.queries, d.queries) and torch.equal(i2t.queries, d.candidates)
    assert t2i.relevant[4] == {4} and t2i.query_modality == "text" and i2t.query_modality == "image"
    # clear errors
    from safetensors.torch import save_file

    save_file(
        {"queries": torch.zeros(3, 4), "candidates": torch.zeros(5, 4)},
        str(tmp_path / "bad.safetensors"),
    )
    with pytest.raises(ValueError, match="no relevance"):
        load_data(tmp_path / "bad.safetensors")
    save_file({"x": torch.zeros(3, 4)}, str(tmp_path / "bad2.safetensors"))
    with pytest.raises(ValueError, match="needs 'queries'"):
        load_data(tmp_path / "bad2.safetensors")
    with pytest.raises(ValueError, match="outside"):
        ExplorerData(torch.zeros(2, 4), torch.zeros(3, 4), [{0}, {3}])
    with pytest.raises(FileNotFoundError):
        load_data(tmp_path / "missing.safetensors")


def test_features_table_names_and_tags(tmp_path, planted):
    import pyarrow as pa
    import pyarrow.parquet as pq

    c = planted.sae.cfg.d_sae
    names = [f"concept {i}" for i in range(c)]
    tags = ["visual" if i in planted.distractors else "textual" for i in range(c)]
    pq.write_table(
        pa.table(
            {
                "feature": list(range(c)),
                "tag": tags,
                "name": names,
                "energy": [float(i) for i in range(c)],
            }
        ),
        tmp_path / "features.parquet",
    )
    s = ExplorerSession(planted.sae, planted.data, features=tmp_path / "features.parquet")
    feats = s.features(limit=3)
    top = feats[0]["id"]
    assert top in planted.distractors and feats[0]["tag"] == "visual"
    assert feats[0]["name"] == f"concept {top}" and feats[0]["energy"] == float(top)
    assert s.info()["stats_source"] == "features table"
    # without a table: modality scores from the data (distractors are shared: ~0.5, bimodal)
    plain = ExplorerSession(planted.sae, planted.data)
    f0 = plain.features(limit=1)[0]
    assert f0["tag"] == "bimodal" and 0.3 < f0["modality_score"] < 0.7
    textual = [f for f in plain.features(limit=None) if f["id"] in planted.textual]
    assert textual and all(f["tag"] == "textual" for f in textual)
    pq.write_table(pa.table({"feature": [c + 5]}), tmp_path / "bad.parquet")
    with pytest.raises(ValueError, match="features table ids"):
        ExplorerSession(planted.sae, planted.data, features=tmp_path / "bad.parquet")


# ------------------------------------------------------------------ HTTP API
def _get(url: str):
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def _post(url: str, body) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_http_api(session, planted):
    server, url = serve_in_thread(session, "127.0.0.1", 0)
    try:
        assert server.server_address[0] == "127.0.0.1" and url.startswith("http://127.0.0.1:")
        st, ct, body = _get(url)
        assert st == 200 and ct.startswith("text/html") and b"/static/app.js" in body
        assert b"http://" not in body and b"https://" not in body  # nothing external
        st, ct, js = _get(url + "static/app.js")
        assert st == 200 and "javascript" in ct and b"/api/evaluate" in js
        st, _, plotly = _get(url + "static/plotly.min.js")
        assert st == 200 and len(plotly) > 1_000_000
        assert _get(url + "static/../session.py")[0] == 404
        assert _get(url + "api/nope")[0] == 404

        st, _, raw = _get(url + "api/info")
        info = json.loads(raw)
        assert (
            st == 200 and info["n_queries"] == planted.data.n_queries and info["ks"] == [1, 5, 10]
        )
        feats = json.loads(_get(url + "api/features?limit=4")[2])["features"]
        assert [f["id"] for f in feats] == session.ranking[:4].tolist()

        st, res = _post(url + "api/evaluate", {"ablate": planted.distractors, "op": "project"})
        want = session.evaluate(planted.distractors, "project").metrics
        assert st == 200 and res["metrics"] == pytest.approx(want)
        assert res["baseline"]["R@1"] == pytest.approx(session.baseline["R@1"])
        assert res["n_ablated"] == len(planted.distractors)
        st, res = _post(url + "api/evaluate", {"ablate": [], "whiten": "realign", "alpha": 0.2})
        assert st == 200 and res["metrics"]["R@1"] == pytest.approx(
            session.evaluate([], whiten="realign", alpha=0.2).metrics["R@1"]
        )
        st, sw = _post(url + "api/sweep", {"op": "subtract", "n_max": 4})
        assert st == 200 and sw["x"] == [0, 1, 2, 4] and len(sw["recall"]["1"]) == 4

        ids = ",".join(map(str, planted.distractors))
        st, _, raw = _get(url + f"api/query/2?ablate={ids}&op=subtract")
        q = json.loads(raw)
        assert st == 200 and q["after"]["rank"] == 1 and q["after"]["top"][0]["relevant"]
        assert q == session.query(2, planted.distractors, "subtract")

        st, err = _post(url + "api/evaluate", {"ablate": [1], "op": "bogus"})
        assert st == 400 and "unknown ablation op" in err["error"]
        st, err = _post(url + "api/evaluate", b"{not json")
        assert st == 400 and "not JSON" in err["error"]
        st, _, raw = _get(url + "api/query/abc")
        assert st == 400 and "integer" in json.loads(raw)["error"]
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------ CLI
def test_cli_explore_wiring(tmp_path, planted):
    import argparse

    from saeprobe.cli import explore

    sub = argparse.ArgumentParser().add_subparsers()
    parser = explore.add_parser(sub)
    sae_dir = planted.sae.save(tmp_path / "sae")
    data = save_data(tmp_path / "emb.safetensors", planted.data.queries, planted.data.candidates)
    args = parser.parse_args(["--sae", str(sae_dir), "--data", str(data), "--no-browser"])
    assert args.host == "127.0.0.1" and args.port == 8765 and args.func is explore.run
    s = explore.build_session(args)
    ref = ExplorerSession(planted.sae, planted.data)
    assert s.baseline == pytest.approx(ref.baseline)
    assert s.evaluate(planted.distractors).metrics == pytest.approx(
        ref.evaluate(planted.distractors).metrics
    )
