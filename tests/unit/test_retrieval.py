"""Retrieval evaluation: scoring, caching, validation, sweeps (no model forward)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torch.nn.functional as F

from saeprobe.atomic import atomic_save_safetensors
from saeprobe.distributed import shard_indices
from saeprobe.ranking import recall_at_k, topk_search
from saeprobe.retrieval import (
    EmbeddingCache,
    RetrievalConfig,
    format_table,
    score_methods,
    validate_embeddings,
    write_json,
)
from saeprobe.retrieval.embedding import _gather_parts
from saeprobe.sweeps import sweep_figure
from saeprobe.whitening import whiten_pair

pytestmark = pytest.mark.numerics  # float tolerances: also run on the AVX2 code path


def _anisotropic_pairs(n=120, d=24, seed=0):
    """Matched query/candidate pairs whose content is drowned by a shared mean and
    by high-variance nuisance directions (the homogenised geometry ReAlign fixes)."""
    g = torch.Generator().manual_seed(seed)
    common = torch.randn(d, generator=g) * 3.0
    nuisance = torch.randn(3, d, generator=g) * 2.5
    content = torch.randn(n, d, generator=g)

    def side():
        return F.normalize(common + content + torch.randn(n, 3, generator=g) @ nuisance, dim=1)

    return side(), side(), [{i} for i in range(n)]


def test_score_methods_matches_manual_pipeline():
    q, c, rel = _anisotropic_pairs()
    cfg = RetrievalConfig(methods=["none", "realign", "zca", "pca"], device="cpu", depth=20)
    res = score_methods(q, c, rel, cfg)
    assert list(res) == ["base", "realign", "zca", "pca"]
    for label, method in (("base", "none"), ("realign", "realign")):
        wq, wc = whiten_pair(q, c, method)
        idx = topk_search(wq, wc, 20).indices
        manual = recall_at_k(idx, rel, (1, 5, 10))
        assert res[label]["R@1"] == manual[1]
        assert res[label]["R@10"] == manual[10]
        assert set(res[label]) >= {"R@1", "R@5", "R@10", "MRR", "nDCG@10", "seconds"}
    # removing the shared direction helps on this geometry (the paper's claim, in miniature)
    assert res["realign"]["R@1"] > res["base"]["R@1"]
    # candidate-statistics mode and a different alpha are honoured
    res_c = score_methods(
        q, c, rel, RetrievalConfig(methods=["realign"], stats="candidates", depth=10)
    )
    wq, wc = whiten_pair(q, c, "realign", stats="candidates")
    assert res_c["realign"]["R@1"] == recall_at_k(topk_search(wq, wc, 10).indices, rel, (1,))[1]


def test_small_corpus_reports_all_cutoffs():
    q, c, rel = _anisotropic_pairs(n=6)
    res = score_methods(q, c, rel, RetrievalConfig(methods=["none"]))
    # fewer than 10 candidates: the ranking is complete, R@10 = R@6 = 1
    assert res["base"]["R@10"] == 1.0 and "nDCG@10" in res["base"]


def test_validate_embeddings(caplog):
    e = torch.randn(4, 8)
    e[2] = 0
    with caplog.at_level(logging.WARNING, logger="saeprobe.retrieval"):
        out = validate_embeddings(e, ["a", "b", "c", "d"], "query")
    assert "1 query embeddings are zero vectors" in caplog.text and "'c'" in caplog.text
    torch.testing.assert_close(out[0].norm(), torch.tensor(1.0))
    e[1, 3] = float("nan")
    with pytest.raises(ValueError, match="1 candidate embeddings contain NaN/inf \\(e.g. 'b'\\)"):
        validate_embeddings(e, ["a", "b", "c", "d"], "candidate")
    with pytest.raises(ValueError, match="query dim 8 != candidate dim 4"):
        score_methods(torch.randn(3, 8), torch.randn(5, 4), [{0}] * 3, RetrievalConfig())


def test_embedding_cache_roundtrip(tmp_path):
    cache = EmbeddingCache(tmp_path)
    k1 = cache.key({"model": "m"}, {"ids": "x"}, "mean", "final_norm")
    k2 = cache.key({"model": "m"}, {"ids": "x"}, "mean", "resid_post.1")
    k3 = cache.key({"model": "m2"}, {"ids": "x"}, "mean", "final_norm")
    assert len({k1, k2, k3}) == 3
    e = torch.randn(5, 3)
    cache.save(k1, "query", e, {"n": 5})
    torch.testing.assert_close(cache.load(k1, "query", 5), e)
    assert cache.load(k1, "query", 6) is None  # wrong size: recompute
    assert cache.load(k2, "query", 5) is None
    (tmp_path / f"corpus-{k1}.safetensors").write_bytes(b"garbage")
    assert cache.load(k1, "corpus", 5) is None
    assert EmbeddingCache(None).load(k1, "query", 5) is None
    assert not list(tmp_path.glob("*.tmp"))


def test_rank_shards_gather_in_order(tmp_path):
    n, world = 11, 3
    shards = [(r.start, r.stop) for r in (shard_indices(n, i, world) for i in range(world))]
    assert shards == [(0, 4), (4, 8), (8, 11)]
    full = torch.arange(n * 2, dtype=torch.float32).view(n, 2)
    for r, (a, b) in enumerate(shards):
        atomic_save_safetensors(
            tmp_path / f"query-k.part{r}of{world}.safetensors", {"embeddings": full[a:b]}
        )
    torch.testing.assert_close(_gather_parts(tmp_path, "query", "k", world), full)
    assert not list(tmp_path.glob("*.part*"))  # parts removed after the merge
    with pytest.raises(FileNotFoundError, match="of rank 0 is missing"):
        _gather_parts(tmp_path, "query", "k", world)


def test_format_table_and_json(tmp_path):
    res = {
        "base": {"R@1": 0.25, "R@5": 0.5, "MRR": 0.4, "seconds": 1.0},
        "realign": {"R@1": 0.5, "R@5": 0.75, "MRR": 0.6},
    }
    table = format_table(res)
    lines = table.splitlines()
    assert lines[0].split() == ["method", "R@1", "R@5", "MRR"]
    assert lines[2].split() == ["base", "25.00", "50.00", "40.00"]
    assert lines[3].split() == ["realign", "50.00", "75.00", "60.00"]
    p = write_json({"results": res}, tmp_path / "r.json")
    assert json.loads(p.read_text())["results"]["realign"]["R@1"] == 0.5
    cfg = RetrievalConfig(methods=["base", "lw"], alpha=0.2)
    assert cfg.methods == ["none", "ledoit_wolf"]
    assert RetrievalConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


def test_sweep_figure_html(tmp_path):
    sweep = {
        "x": [0.0, 0.1, 0.5],
        "x_name": "alpha",
        "x_labels": ["0", "0.1", "0.5"],
        "recall": {"1": [0.1, 0.2, 0.15], "5": [0.3, 0.4, 0.35]},
        "methods": {"realign": {"recall": {"1": [0.1, 0.2, 0.15], "5": [0.3, 0.4, 0.35]}}},
        "baseline": {"R@1": 0.05, "R@5": 0.2},
        "task": 1,
        "data": "x/mbeir_t_task0",
    }
    p = sweep_figure(sweep, tmp_path / "fig.html")
    html = p.read_text()
    assert "realign R@1" in html and "base R@5" in html
    assert (
        "cdn.plot.ly" not in html.split("<body>")[0] or "plotly.js" in html
    )  # js inlined (offline)
    assert len(html) > 1_000_000
