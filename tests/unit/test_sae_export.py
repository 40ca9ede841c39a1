"""``saeprobe export neuronpedia``: a small run folder (RunWriter, save_sae, ActivationStoreWriter)
exported in sae-dashboard's Neuronpedia layout, read back with sae-dashboard's own data classes
(when installed) and against the documented schema, numbers checked against saeprobe's codes."""

from __future__ import annotations

import json

import pytest
import torch

from saeprobe import Item, Modality
from saeprobe.sae import SAEConfig, TopKSAE, load_sae
from tests.unit.test_sae_pretrained import run_cli

D = C = 16
CAT, IMG, BASE = 3, 7, 0  # planted features: the word "cat", image tokens, every token
FEATURE_KEYS = {
    "feature_index", "neuron_alignment_indices", "neuron_alignment_values", "neuron_alignment_l1",
    "correlated_neurons_indices", "correlated_neurons_l1", "correlated_neurons_pearson",
    "correlated_features_indices", "correlated_features_l1", "correlated_features_pearson",
    "neg_str", "neg_values", "pos_str", "pos_values", "frac_nonzero", "freq_hist_data_bar_values",
    "freq_hist_data_bar_heights", "logits_hist_data_bar_heights", "logits_hist_data_bar_values",
    "n_prompts_total", "n_tokens_in_prompt", "dataset", "decoder_weights_dist", "activations",
    "vector",
}  # fmt: skip
ACTIVATION_KEYS = {
    "bin_min",
    "bin_max",
    "bin_contains",
    "tokens",
    "values",
    "qualifying_token_index",
}


@pytest.fixture()
def run_dir(tmp_path):
    """Three text items and one image item; per token a planted code: BASE at 0.5 everywhere,
    CAT at 2.0 on the token " cat", IMG at 1, 2, 3, 4 on the four image tokens."""
    from PIL import Image

    from saeprobe.run import RunWriter
    from saeprobe.store import ActivationStoreWriter
    from saeprobe.testing import build_tokenizer

    tok = build_tokenizer(special_tokens=["<image>"])
    tok.save_pretrained(tmp_path / "tok")
    image_id = tok.convert_tokens_to_ids("<image>")
    items = [
        Item("cat", text="a cat on a mat"),
        Item("dog", text="a dog in the sea"),
        Item("pic", image=Image.new("RGB", (40, 30), (200, 30, 30))),
        Item("cat2", text="the cat sat"),
    ]
    w = RunWriter(tmp_path / "run", title="export test")
    w.add_items("things", items)
    folder = w.add_model("m", path=str(tmp_path / "tok"), kind="mllm", d=D, items="things")
    q, _ = torch.linalg.qr(torch.randn(D, C, generator=torch.Generator().manual_seed(0)))
    sae = TopKSAE(
        SAEConfig(arch="topk", d_in=D, d_sae=C, k=2, metadata={"hook_point": "final_norm"})
    )
    with torch.no_grad():
        sae.W_dec.copy_(q.T)
        sae.W_enc.copy_(q.T)
        sae.b_enc.fill_(-1e-4)  # float32 round-off of the planted zeros stays off
    sae.save(folder / "sae")
    cat_id = tok(" cat", add_special_tokens=False)["input_ids"]
    assert len(cat_id) == 1
    with ActivationStoreWriter(folder / "store", d=D, dtype="fp32", fingerprint="f") as st:
        for sid, item in enumerate(items):
            if item.image is not None:
                ids = [image_id] * 4 + tok(" a photo", add_special_tokens=False)["input_ids"]
                mods = [Modality.IMAGE] * 4 + [Modality.TEMPLATE] * (len(ids) - 4)
            else:
                ids = tok(item.text, add_special_tokens=False)["input_ids"]
                mods = [Modality.TEXT] * len(ids)
            ids, mods = [ids[0]] + ids, [Modality.SYSTEM] + mods  # a SYSTEM token: not exported
            z = torch.zeros(len(ids), C)
            z[:, BASE] = 0.5
            for t, (i, m) in enumerate(zip(ids, mods, strict=True)):
                if i == cat_id[0] and m == Modality.TEXT:
                    z[t, CAT] = 2.0
            img = [t for t, m in enumerate(mods) if m == Modality.IMAGE]
            z[img, IMG] = torch.tensor([1.0, 2.0, 3.0, 4.0][: len(img)])
            z[0] = 0.0
            z[0, 11] = 9.0  # only the SYSTEM token fires latent 11: it must not be exported
            st.add(z @ q.T, torch.full((len(ids),), sid), torch.arange(len(ids)),
                   torch.tensor(ids), torch.tensor([int(m) for m in mods], dtype=torch.int8))  # fmt: skip
    return tmp_path / "run", tok


def _read(folder):
    batches = [json.loads(p.read_text()) for p in sorted(folder.glob("batch-*.json"))]
    feats = {f["feature_index"]: f for b in batches for f in b["features"]}
    return batches, feats


def test_export_neuronpedia_layout_and_numbers(run_dir, tmp_path, capsys):
    from saeprobe.store import ActivationStore

    run, tok = run_dir
    out = tmp_path / "np"
    assert run_cli(["export", "neuronpedia", str(run), "--out", str(out), "--n-top", "3",
                    "--features-per-batch", "2"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    folder = out / "m_saeprobe_final_norm_16"
    assert printed == {"model": "m", "export": str(folder)}
    batches, feats = _read(folder)
    assert sorted(feats) == [BASE, CAT, IMG] and len(batches) == 2
    assert all(
        b["model_id"] == "m" and b["sae_set"] == "saeprobe" and b["layer"] == 0 for b in batches
    )
    skipped = json.loads((folder / "skipped_indexes.json").read_text())
    assert skipped["skipped_indexes"] == [f for f in range(C) if f not in (BASE, CAT, IMG)]
    assert 11 in skipped["skipped_indexes"]  # fired on a SYSTEM token only
    for f in feats.values():  # the documented schema (sae-dashboard's to_dict keys)
        assert set(f) == FEATURE_KEYS and all(set(a) == ACTIVATION_KEYS for a in f["activations"])

    # numbers against saeprobe's own codes of the same tokens
    sae = load_sae(run / "models" / "m" / "sae")
    store = ActivationStore(run / "models" / "m" / "store")
    allb = store.read_all()
    keep = allb.modality != int(Modality.SYSTEM)
    with torch.no_grad():
        z = sae.encode(allb.acts[keep])
    sid = allb.sample_id[keep]
    n_tok = int(keep.sum())
    texts = {}
    for s in range(4):
        ids = allb.token_id[keep][sid == s].tolist()
        mods = allb.modality[keep][sid == s].tolist()
        texts[s] = [
            "<image>" if m == int(Modality.IMAGE) else tok.decode([i]) for i, m in zip(ids, mods)
        ]
    for f, feat in feats.items():
        assert feat["frac_nonzero"] == pytest.approx(float((z[:, f] > 0).sum()) / n_tok)
        assert feat["n_prompts_total"] == 4
        fired_in = [s for s in range(4) if float(z[sid == s, f].max()) > 0]
        assert len(feat["activations"]) == min(3, len(fired_in))
        chosen = []
        for act in feat["activations"]:
            (s,) = [s for s in range(4) if texts[s] == act["tokens"]]  # item texts are unique
            ref = z[sid == s, f]
            assert act["values"] == pytest.approx(ref.tolist(), abs=1e-3)
            assert act["bin_max"] == pytest.approx(float(ref.max()), abs=1e-3)
            assert act["qualifying_token_index"] == int(ref.argmax())
            chosen.append(float(ref.max()))
        assert chosen == sorted(chosen, reverse=True)  # best first
        rest = [float(z[sid == s, f].max()) for s in fired_in if texts[s] not in
                [a["tokens"] for a in feat["activations"]]]  # fmt: skip
        assert all(r <= min(chosen) + 1e-3 for r in rest)  # the top items by their maximum
        heights = feat["freq_hist_data_bar_heights"]
        assert sum(heights) == float((z[:, f] > 0).sum()) and len(heights) == 20
    assert (
        feats[CAT]["activations"][0]["tokens"][
            feats[CAT]["activations"][0]["qualifying_token_index"]
        ]
        == " cat"
    )
    assert feats[IMG]["activations"][0]["values"][:4] == [1.0, 2.0, 3.0, 4.0]

    # the image extension: image-token activations and the item's thumbnail
    lines = [json.loads(x) for x in (folder / "saeprobe_images.jsonl").read_text().splitlines()]
    img = [x for x in lines if x["feature_index"] == IMG][0]
    assert img["item_id"] == "pic" and img["item_source"] == "things" and img["kind"] == "image"
    assert img["image_token_indices"] == [0, 1, 2, 3] and img["image_token_values"] == [
        1.0,
        2.0,
        3.0,
        4.0,
    ]
    assert img["max_image_value"] == 4.0 and (folder / img["thumb"]).is_file()
    assert all(x["item_id"] == "pic" for x in lines)  # only the image item has image tokens
    manifest = json.loads((folder / "saeprobe_export.json").read_text())
    assert manifest["format"] == "saeprobe.neuronpedia" and manifest["n_features"] == 3


def test_export_reads_back_with_sae_dashboard_classes(run_dir, tmp_path):
    npd = pytest.importorskip(
        "sae_dashboard.neuronpedia.neuronpedia_dashboard",
        reason="sae-dashboard is installed with --no-deps (pip install --no-deps sae-dashboard)",
    )
    run, _ = run_dir
    out = tmp_path / "np"
    assert run_cli(["export", "neuronpedia", str(run), "--out", str(out), "--context", "1",
                    "--features", "0-7", "--model-id", "tiny-mllm", "--layer", "5"]) == 0  # fmt: skip
    folder = out / "tiny-mllm_saeprobe_final_norm_16"
    (path,) = folder.glob("batch-*.json")
    data = json.loads(path.read_text())
    batch = npd.NeuronpediaDashboardBatch(**data)
    assert batch.to_dict() == data  # every field is one the dashboard knows, and nothing is lost
    assert batch.model_id == "tiny-mllm" and batch.layer == 5
    feats = {f.feature_index: f for f in batch.features}
    assert sorted(feats) == [BASE, CAT, IMG]
    top = feats[IMG].activations[0]
    assert isinstance(top, npd.NeuronpediaDashboardActivation)
    assert top.tokens == ["<image>", "<image>", " a"] and top.values == [3.0, 4.0, 0.0]
    assert top.qualifying_token_index == 1 and top.bin_max == 4.0  # the window: max +- 1 token
    assert (
        feats[CAT].activations[0].tokens[feats[CAT].activations[0].qualifying_token_index] == " cat"
    )


def test_export_errors_are_one_line(run_dir, tmp_path, capsys):
    run, _ = run_dir
    assert run_cli(["export", "neuronpedia", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a run folder" in capsys.readouterr().err
    argv = ["export", "neuronpedia", str(run), "--out", str(tmp_path / "o"), "--features", "99"]
    assert run_cli(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "must name latents in 0..15" in err and len(err.splitlines()) == 1
