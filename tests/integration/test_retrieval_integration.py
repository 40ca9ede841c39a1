"""End to end: ``saeprobe retrieve`` / ``saeprobe sweep`` on tiny random models and
M-BEIR-format fixtures (an MLLM and a dual encoder)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from saeprobe.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("retrieval_e2e")


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen2_vl")


@pytest.fixture(scope="module")
def clip(tiny_models):
    return tiny_models("clip")


def _cli(command: str, model, folder, cache, out, *extra: str) -> int:
    """``saeprobe COMMAND --model MODEL --data FOLDER --cache CACHE --out OUT EXTRA...``
    in-process; returns the exit code."""
    common = ["--model", str(model), "--data", str(folder), "--cache", str(cache)]
    return main([*command.split(), *common, "--out", str(out), *extra])


def _hf_mean_pooled(adapter, item):
    """The paper's embedding from HF outputs: mean of hidden_states[-1] over attended tokens."""
    batch = adapter.encode([item]).to(adapter.device)
    with torch.inference_mode():
        out = adapter.forward(batch, output_hidden_states=True)
    h = out.hidden_states[-1].float()
    m = batch.attention_mask[..., None].float()
    return ((h * m).sum(1) / m.sum(1))[0]


def test_retrieve_mllm_end_to_end(workdir, qwen, capsys, monkeypatch):
    from saeprobe.data.mbeir import open_mbeir
    from saeprobe.models import load_model
    from tests.helpers import build_task_folder

    folder = build_task_folder(workdir, 8, n_queries=4, n_corpus=6, name="mbeir_tiny_task8")
    cache = workdir / "cache_qwen"
    out = workdir / "qwen.json"
    rc = _cli("retrieve", qwen, folder, cache, out, "--whiten", "realign,zca", "--batch-size", "3")
    assert rc == 0
    printed = capsys.readouterr().out
    assert "task 8" in printed and "realign" in printed and "R@10" in printed
    res = json.loads(out.read_text())
    assert res["task"] == 8 and res["n_queries"] == 4 and res["n_corpus"] == 6
    assert set(res["results"]) == {"base", "realign", "zca"}
    for m in res["results"].values():
        assert 0 <= m["R@1"] <= m["R@5"] <= m["R@10"] <= 1 and m["R@10"] == 1.0  # 6 candidates
    assert res["layer"] == "final_norm" and res["pool"] == "mean"

    # the cached query embeddings are the paper's: HF hidden_states[-1], mean over attended tokens
    from safetensors.torch import load_file

    (qfile,) = cache.glob("query-*.safetensors")
    cached = load_file(str(qfile))["embeddings"]
    adapter = load_model(str(qwen))
    task = open_mbeir(folder)
    items = list(task.queries)
    assert items[0].prompt == "image_text_8"
    for i in (0, 3):
        torch.testing.assert_close(
            cached[i], _hf_mean_pooled(adapter, items[i]), atol=1e-4, rtol=1e-4
        )

    # re-scoring with other whitening methods reads the cache: no model forward
    import saeprobe.retrieval as retrieval

    def no_forward(*a, **k):
        raise AssertionError("model forward on a cached run")

    monkeypatch.setattr(retrieval, "embed_items", no_forward)
    rc = _cli("retrieve", qwen, folder, cache, workdir / "qwen2.json", "--whiten", "pca,oas")
    assert rc == 0
    res2 = json.loads((workdir / "qwen2.json").read_text())
    assert set(res2["results"]) == {"base", "pca", "oas"}
    assert res2["results"]["base"] == {
        **res["results"]["base"],
        "seconds": res2["results"]["base"]["seconds"],
    }


def test_retrieve_dual_encoder_fusion(workdir, clip):
    from saeprobe import Item
    from saeprobe.data.mbeir import open_mbeir
    from saeprobe.models import load_model
    from saeprobe.retrieval import embed_items
    from tests.helpers import build_task_folder

    folder = build_task_folder(workdir, 3, n_queries=3, n_corpus=5, name="mbeir_tiny_task2")
    out = workdir / "clip.json"
    rc = _cli("retrieve", clip, folder, "none", out, "--whiten", "realign")
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["pool"] == "native" and set(res["results"]) == {"base", "realign"}
    # image+text candidates: normalize(normalize(e_image) + normalize(e_text)) of the projections
    adapter = load_model(str(clip))
    task = open_mbeir(folder)
    cands = list(task.corpus)
    emb = embed_items(adapter, cands, len(cands), batch_size=2)["native"]
    c = cands[1]
    with torch.inference_mode():
        ei = adapter.embed(adapter.encode([Item(id="i", image=c.image)]))[0]
        et = adapter.embed(adapter.encode([Item(id="t", text=c.text)]))[0]
    ref = F.normalize(F.normalize(ei, dim=0) + F.normalize(et, dim=0), dim=0)
    torch.testing.assert_close(emb[1], ref, atol=1e-5, rtol=1e-5)


def test_sweeps_end_to_end(workdir, qwen):
    from tests.helpers import build_task_folder

    folder = build_task_folder(workdir, 1, n_queries=4, n_corpus=6, name="mbeir_tiny_task0")
    cache = workdir / "cache_sweep"
    out = workdir / "alpha.json"
    rc = _cli("sweep alpha", qwen, folder, cache, out, "--alphas", "0,0.1,1")
    assert rc == 0
    a = json.loads(out.read_text())
    assert a["x"] == [0.0, 0.1, 1.0] and a["x_name"] == "alpha"
    assert set(a["recall"]) == {"1", "5", "10"} and len(a["recall"]["1"]) == 3
    assert "R@1" in a["baseline"]
    assert out.with_suffix(".html").exists()
    # alpha=0.1 of the sweep equals a plain retrieve run with ReAlign
    rc = _cli("retrieve", qwen, folder, cache, workdir / "r.json")
    r = json.loads((workdir / "r.json").read_text())["results"]["realign"]
    assert a["recall"]["5"][1] == r["R@5"] and a["mrr"][1] == r["MRR"]

    out = workdir / "layers.json"
    rc = _cli("sweep layers", qwen, folder, cache, out)
    assert rc == 0
    s = json.loads(out.read_text())
    from saeprobe.models import load_model

    n_layers = load_model(str(qwen)).n_layers
    assert s["x_name"] == "layer" and s["x"] == [*range(n_layers), n_layers]
    assert s["x_labels"][-1] == "final_norm"
    assert set(s["methods"]) == {"base", "realign"} and s["method"] == "realign"
    assert len(s["recall"]["10"]) == n_layers + 1
    # the final_norm point equals the plain retrieve run (same cached embeddings)
    assert s["methods"]["realign"]["recall"]["5"][-1] == r["R@5"]
