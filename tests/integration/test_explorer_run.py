"""Explorer on run folders: menus, sessions, feature table, cards with items (image heatmaps,
decoded tokens), the per-query view, export, the CLI, the notebook view; and the split
modules (strict settings, feature columns from analysis, the cached ReAlign path)."""

from __future__ import annotations

import argparse
import json
import shutil
import urllib.request

import numpy as np
import pytest
import torch

from analysis import FEATURE_COLUMNS, ablate
from saeprobe._types import Modality
from saeprobe.explorer import (
    TABLE_COLUMNS,
    EvalConfig,
    ExplorerData,
    ExplorerSession,
    RunExplorer,
    show,
)
from saeprobe.explorer.tokens import TokenDecoder, image_grid
from saeprobe.ranking import ranking_metrics, topk_search
from saeprobe.run import RunError, RunFolder
from saeprobe.testing.run import build_tiny_run
from saeprobe.whitening import realign

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    # later: the `saeprobe demo --quick` run folder (a one-line swap)
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")


@pytest.fixture(scope="module")
def app(tiny_run):
    a = RunExplorer(tiny_run)
    a.prepare()
    return a


def image_concept(app, model="tiny-qwen") -> int:
    """An active concept whose top samples include an image item."""
    content = app.content(model)
    items = app.run.items("photos")
    for row in app.features(model, "t2i", limit=None)["features"]:
        for sid, _ in content.samples(row["id"], 6):
            if items.kinds[items.row[content.item_id(sid)]] == "image":
                return row["id"]
    raise AssertionError("no concept fires on an image")


# ------------------------------------------------------------------ run folder
@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_models_tasks_and_sessions(app, tiny_run):
    d = app.describe()
    assert [m["name"] for m in d["models"]] == ["tiny-qwen", "tiny-qwen-l0"]
    assert all(m["tasks"] == ["t2i", "i2t"] for m in d["models"])
    assert d["default"] == {"model": "tiny-qwen", "task": "t2i"}
    # the session of a task equals one built by hand from the run folder
    from saeprobe.sae import load_sae

    run = RunFolder(tiny_run)
    t = run.task("tiny-qwen-l0", "i2t")
    ref = ExplorerSession(
        load_sae(run.sae_path("tiny-qwen-l0")), ExplorerData(t.queries, t.candidates, t.relevant)
    )
    s = app.session("tiny-qwen-l0", "i2t")
    S = ref.top_distractors(3)
    assert s.top_distractors(3) == S
    assert s.evaluate(S).metrics == pytest.approx(ref.evaluate(S).metrics, abs=1e-12)
    assert s.data.query_modality == "image" and s.data.candidate_labels[0].startswith("A woman")
    info = app.info("tiny-qwen", "t2i")
    assert info["tokenizer"] and info["content"] and info["stats_source"] == "features table"
    with pytest.raises(ValueError, match="unknown model"):
        app.info("nope", None)
    with pytest.raises(ValueError, match="no task"):
        app.info("tiny-qwen", "x2y")


def test_not_a_run_folder(tmp_path, capsys):
    from saeprobe.cli import main

    with pytest.raises(RunError, match="no run.json"):
        RunExplorer(tmp_path)
    assert main(["explore", str(tmp_path), "--no-browser", "--port", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a run folder" in err[0] and "saeprobe demo" in err[0]


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_cli_run_dir_and_old_form(tiny_run, tmp_path):
    from saeprobe.cli import CLIError, explore
    from saeprobe.explorer import SingleSession, save_data

    parser = explore.add_parser(argparse.ArgumentParser().add_subparsers())
    args = parser.parse_args(
        [str(tiny_run), "--model", "tiny-qwen-l0", "--task", "i2t", "--no-browser"]
    )
    a = explore.build_app(args)
    assert isinstance(a, RunExplorer) and ("tiny-qwen-l0", "i2t") in a._sessions
    with pytest.raises(CLIError, match="run folder"):
        explore.build_app(parser.parse_args(["--no-browser"]))
    s = a.session("tiny-qwen", "t2i")
    data = save_data(
        tmp_path / "emb.safetensors", s.data.queries, s.data.candidates, s.data.relevant
    )
    old = parser.parse_args(["--sae", str(tiny_run / "models/tiny-qwen/sae"), "--data", str(data)])
    single = explore.build_app(old)
    assert isinstance(single, SingleSession)
    assert single.session().baseline == pytest.approx(s.baseline)


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_model_without_task_shows_the_analysis_table(tiny_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    index = json.loads((run / "run.json").read_text())
    index["tasks"]["tiny-qwen-l0"] = []
    (run / "run.json").write_text(json.dumps(index))
    a = RunExplorer(run)
    info = a.info("tiny-qwen-l0", None)
    assert info["no_task"] and info["c"] == 512
    page = a.features("tiny-qwen-l0", None, limit=5)
    energy = [r["energy"] for r in page["features"]]
    assert energy == sorted(energy, reverse=True)
    card = a.card("tiny-qwen-l0", None, page["features"][0]["id"])
    assert card["items"] and card["bridge_partners"] == []
    with pytest.raises(RunError, match="no retrieval task"):
        a.session("tiny-qwen-l0", None)


# ------------------------------------------------------------------ cards
@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_card_images_heatmap_and_tokens(app, tiny_run):
    concept = image_concept(app)
    card = app.card("tiny-qwen", "t2i", concept)
    assert card["row"]["id"] == concept and card["row"]["tag"] in ("textual", "visual", "bimodal")
    images = [it for it in card["items"] if it["image"]]
    assert images
    # the heatmap values are the concept's activations on the sample's image tokens, in order
    from saeprobe.sae import load_sae
    from saeprobe.store import ActivationStore

    store = ActivationStore(tiny_run / "models/tiny-qwen/store")
    sae = load_sae(tiny_run / "models/tiny-qwen/sae")
    items = RunFolder(tiny_run).items("photos")
    for it in images:
        b = store.read_samples([it["sample_id"]])
        keep = b.modality.long() == int(Modality.IMAGE)
        with torch.no_grad():
            z = sae.encode(b.acts[keep].float())[:, concept]
        g = it["image"]
        assert g["rows"] * g["cols"] == len(g["values"]) == int(keep.sum())
        assert g["values"] == pytest.approx(z[torch.argsort(b.position[keep])].tolist(), abs=1e-5)
        w, h = items.sizes[items.row[it["item"]["id"]]]
        assert (g["rows"], g["cols"]) == image_grid(len(g["values"]), w, h)
        assert it["item"]["thumb"] == f"/thumbs/photos/{items.row[it['item']['id']]}.png"
    # max activations are sorted and the best equals the concept's top activation in the store
    acts = [it["activation"] for it in card["items"]]
    assert acts == sorted(acts, reverse=True) and card["max_activation"] == acts[0]
    # tokens are decoded with the model's tokenizer (offline); captions are TEXT tokens
    texts = [
        it
        for it in app.card("tiny-qwen", "t2i", concept, n_items=8)["items"]
        if it["item"]["kind"] == "text"
    ]
    for it in texts:
        words = "".join(t["text"] for t in it["tokens"] if t["kind"] == "text")
        assert words.strip() == it["item"]["text"].strip()


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_card_without_tokenizer_shows_positions(app):
    concept = image_concept(app)
    saved = app._decoders["tiny-qwen"]
    app._decoders["tiny-qwen"] = TokenDecoder(None)
    try:
        card = app.card("tiny-qwen", "t2i", concept, n_items=8)
    finally:
        app._decoders["tiny-qwen"] = saved
    toks = [t for it in card["items"] if it["tokens"] for t in it["tokens"]]
    assert toks and all(t["text"] == f"#{t['position']}" for t in toks)
    assert not TokenDecoder("/no/such/model").available


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_top_samples_equal_a_dense_pass(app, tiny_run):
    from saeprobe.sae import load_sae
    from saeprobe.store import ActivationStore

    store = ActivationStore(tiny_run / "models/tiny-qwen/store")
    sae = load_sae(tiny_run / "models/tiny-qwen/sae")
    b = store.read_all()
    keep = b.modality.long() != int(Modality.SYSTEM)
    with torch.no_grad():
        z = sae.encode(b.acts[keep].float())  # [T, c] dense
    sid = b.sample_id[keep]
    n = int(sid.max()) + 1
    best = torch.zeros(n, z.shape[1])
    for i in range(n):
        if bool((sid == i).any()):
            best[i] = z[sid == i].max(0).values  # [samples, c]
    content = app.content("tiny-qwen")
    for concept in app.session().top_distractors(20):
        want = torch.sort(best[:, concept], descending=True).values[
            : content.top.sample_id.shape[1]
        ]
        got = [a for _, a in content.samples(concept, 8)]
        assert got == pytest.approx(want[want > 0].tolist(), abs=1e-5)


def test_image_grid():
    assert image_grid(16) == (4, 4) and image_grid(16, 300, 100) == (4, 4)
    assert image_grid(12, 112, 75) == (3, 4) and image_grid(12, 75, 112) == (4, 3)
    assert image_grid(12) in ((3, 4), (4, 3)) and image_grid(7, 100, 100) == (1, 7)
    assert image_grid(6, 600, 100) == (1, 6) and image_grid(0) == (0, 0)


# ------------------------------------------------------------------ views
@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_query_view_export_and_scatter(app):
    s = app.session()
    S = s.top_distractors(5)
    q = app.query("tiny-qwen", "t2i", 3, {"ablate": S, "whiten": "realign", "alpha": 0.3})
    assert q["item"]["kind"] == "text" and q["item"]["text"] == q["label"]
    for part in ("before", "after"):
        top = q[part]["top"]
        assert len(top) == 5 and all(t["item"]["thumb"].startswith("/thumbs/photos/") for t in top)
        assert [t["relevant"] for t in top] == [t["index"] in s.data.relevant[3] for t in top]
    assert q["after"] == s.query(3, S, whiten="realign", alpha=0.3)["after"] | {
        "top": q["after"]["top"]
    }
    out = app.export("tiny-qwen", "t2i", {"ablate": S, "op": "project"})
    assert out["model"] == "tiny-qwen" and out["setting"]["ablate"] == sorted(S)
    assert [f["id"] for f in out["features"]] == sorted(S)
    assert out["metrics"] == pytest.approx(s.evaluate(S, "project").metrics)
    json.dumps(out, allow_nan=False)
    sc = app.scatter()
    assert len(sc["id"]) == len(sc["x"]) == len(sc["y"]) and all(0 <= x <= 1 for x in sc["x"])


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_feature_table_sort_filter_search(app):
    s = app.session()
    assert TABLE_COLUMNS == tuple(
        c for c in FEATURE_COLUMNS if c not in ("feature", "attribution")
    ) + ("name",)
    page = app.features(limit=None)
    assert page["total"] == s.feature_table.n_active and [
        r["rank"] for r in page["features"][:5]
    ] == [1, 2, 3, 4, 5]
    e = app.features(limit=20, sort="energy")["features"]
    assert [r["energy"] for r in e] == sorted((r["energy"] for r in e), reverse=True)
    asc = app.features(limit=20, sort="energy", descending=False)["features"]
    assert asc[0]["energy"] <= asc[-1]["energy"]
    vis = app.features(limit=None, tag="visual")
    assert vis["total"] > 0 and all(r["tag"] == "visual" for r in vis["features"])
    one = app.features(limit=None, search=str(e[0]["id"]))["features"]
    assert e[0]["id"] in [r["id"] for r in one]
    with pytest.raises(ValueError, match="sort key"):
        app.features(sort="nope")
    # the columns of features.parquet replace the ones computed from the task
    import pyarrow.parquet as pq

    cols = pq.read_table(app.run.features_path("tiny-qwen")).to_pydict()
    i = e[0]["id"]
    for c in TABLE_COLUMNS:
        if c in cols:
            want = cols[c][i]
            got = s.feature(i)[c]
            assert (
                (got == pytest.approx(want)) if isinstance(want, float) and want == want else True
            )


@pytest.mark.integration  # the tiny run: a real tiny Qwen2-VL pipeline
def test_notebook_show(tiny_run):
    view = show(tiny_run, model="tiny-qwen-l0", task="i2t", height=500)
    try:
        html = view._repr_html_()
        assert "<iframe" in html and 'height="500"' in html and "model=tiny-qwen-l0" in view.url
        assert view.url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(view.url, timeout=10) as r:
            assert r.status == 200 and b"/static/app.js" in r.read()
        base = view.url.split("?")[0]
        body = json.dumps({"model": "tiny-qwen-l0", "task": "i2t", "ablate": [1, 2]}).encode()
        rq = urllib.request.Request(
            base + "api/evaluate", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(rq, timeout=10) as r:
            res = json.loads(r.read())
        assert res["metrics"] == pytest.approx(
            view.session("tiny-qwen-l0", "i2t").evaluate([1, 2]).metrics
        )
    finally:
        view.close()


# ------------------------------------------------------------------ settings and scoring
def test_settings_are_strict():
    assert EvalConfig.make(np.array([3, 1, 3])).ablate == (1, 3)
    assert EvalConfig.make(torch.tensor([2, 0])).ablate == (0, 2)
    assert EvalConfig.make((np.int64(4),), alpha=np.float32(0.5), whiten=True).alpha == 0.5
    for bad in ([True], [1.5], ["3"], "3", 3, {1: 2}, np.array([1.0]), torch.tensor([0.5])):
        with pytest.raises(ValueError, match="integer feature ids"):
            EvalConfig.make(bad)
    for alpha in ("0.1", True, float("nan"), -0.1, 1.5, None):
        with pytest.raises(ValueError, match="alpha"):
            EvalConfig.make([], whiten="realign", alpha=alpha)


@pytest.mark.parametrize("op", ["subtract", "zero", "project"])
@pytest.mark.parametrize("sides", ["both", "candidate"])
def test_realign_path_equals_realign(op, sides):
    """The cached-eigenbasis ReAlign scores equal realign() of the ablated embeddings, for
    every alpha, operator and side (anisotropic data, 1-2 relevant candidates per query)."""
    from saeprobe.sae import SAEConfig, TopKSAE

    g = torch.Generator().manual_seed(11)
    d, Q, N = 40, 60, 150
    sae = TopKSAE(SAEConfig(arch="topk", d_in=d, d_sae=96, k=6, use_decoder_bias=True))
    scale = torch.linspace(3, 0.2, d)
    cand = torch.randn(N, d, generator=g) * scale + 2.0
    queries = cand[:Q] + 0.9 * torch.randn(Q, d, generator=g) * scale
    relevant = [{i, (i + 7) % N} if i % 3 == 0 else {i} for i in range(Q)]
    s = ExplorerSession(sae, ExplorerData(queries, cand, relevant))
    S = s.top_distractors(4)
    with torch.no_grad():
        cq, cc = sae.encode_sparse(queries), sae.encode_sparse(cand)
    D, b = sae.dictionary.detach(), sae.b_dec.detach()
    unit = queries / queries.norm(dim=1, keepdim=True)  # an untouched side: its unit rows
    q = ablate(queries, cq, D, S, op, bias=b) if sides != "candidate" else unit
    c = ablate(cand, cc, D, S, op, bias=b)
    for alpha in (0.0, 0.05, 0.1, 0.5, 1.0):
        rq, rc = realign(q, alpha=alpha), realign(c, alpha=alpha)
        res = s.evaluate(S, op, "realign", alpha, sides)
        assert res.path == "direct"
        ref = ranking_metrics(topk_search(rq, rc, 10).indices, relevant, (1, 5, 10))
        for key in ("R@1", "R@5", "R@10", "MRR"):
            assert res.metrics[key] == pytest.approx(ref[key], abs=1e-12), (alpha, key)
        view = s.query(5, S, op, "realign", alpha, sides)
        cos = rc @ rq[5]
        for t in view["after"]["top"]:
            assert t["score"] == pytest.approx(float(cos[t["index"]]), abs=2e-5)


def test_moving_alpha_reuses_the_fit(monkeypatch):
    from saeprobe.explorer import direct, planted_retrieval

    ps = planted_retrieval(n_pairs=30, seed=4)
    s = ExplorerSession(ps.sae, ps.data)
    calls = []
    real = direct.fit_spectrum
    monkeypatch.setattr(direct, "fit_spectrum", lambda x: calls.append(x.shape) or real(x))
    s.evaluate(ps.distractors, whiten="realign", alpha=0.1)
    assert len(calls) == 2  # one fit per side
    for alpha in (0.2, 0.3, 0.9):
        s.evaluate(ps.distractors, whiten="realign", alpha=alpha)
    assert len(calls) == 2
    s.evaluate(ps.distractors, whiten="realign", alpha=0.2, sides="candidate")
    assert len(calls) == 3  # the queries keep their unablated fit... fitted once, now
    s.evaluate(ps.distractors[:1], whiten="realign", alpha=0.2, sides="candidate")
    assert len(calls) == 4  # a new candidate ablation; the unablated queries are cached
