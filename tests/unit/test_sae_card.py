"""Model cards: every saved SAE gets a hub-ready README.md (read back with huggingface_hub's
own ModelCard and PyYAML); the trainer's facts and the eval metrics end up in it."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from saeprobe.sae import SAEConfig, create_sae, save_sae
from saeprobe.sae.card import read_card_metadata, to_yaml, write_card, write_eval
from tests.unit.test_sae_pretrained import run_cli


def _sae(**meta):
    return create_sae(SAEConfig(arch="topk", d_in=8, d_sae=32, k=4, metadata=meta))


def test_saved_sae_has_a_hub_ready_card(tmp_path):
    from huggingface_hub import ModelCard

    save_sae(_sae(model_name="Qwen/Qwen2-VL-7B-Instruct", hook_point="resid_post.14"), tmp_path)
    card = ModelCard.load(tmp_path / "README.md")  # the hub's own parser
    data = card.data.to_dict()
    assert data["library_name"] == "saeprobe" and data["base_model"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert {"saeprobe", "sparse-autoencoder", "sae_lens", "topk-sae"} <= set(data["tags"])
    assert (data["hook_point"], data["width"], data["k"], data["d_in"]) == (
        "resid_post.14",
        32,
        4,
        8,
    )
    assert data["architecture"] == "topk" and data["sae_lens_architecture"] == "topk"
    assert "sae_metrics" not in data  # nothing measured yet
    assert "# Top-K SAE on Qwen/Qwen2-VL-7B-Instruct (resid_post.14): 32 latents, k=4" in card.text
    assert "SAE.load_from_disk" in card.text and 'load_sae("hf://OWNER/REPO")' in card.text


def test_base_model_only_for_hub_ids(tmp_path):
    local = tmp_path / "my_model"
    local.mkdir()
    for name, want in (
        (str(local), None),
        ("not a repo id", None),
        ("owner/model-1.5", "owner/model-1.5"),
    ):
        save_sae(_sae(model_name=name), tmp_path / "s")
        assert read_card_metadata(tmp_path / "s").get("base_model") == want, name


def test_yaml_header_round_trips_awkward_strings():
    head = {
        "a": 'quote " and colon: and # hash',
        "b": "line\nbreak",
        "c": "ünïcode",
        "n": 3,
        "f": 0.125,
        "t": True,
        "skip": None,
        "nan": float("nan"),
        "lst": ["x: y", "z"],
        "d": {"inner": 1.5e-9, "empty": {}},
    }
    back = yaml.safe_load(to_yaml(head))
    assert back == {
        "a": head["a"], "b": head["b"], "c": head["c"], "n": 3, "f": 0.125, "t": True,
        "lst": ["x: y", "z"], "d": {"inner": 1.5e-9},
    }  # fmt: skip


def test_trainer_output_gets_its_card_and_card_cli_rewrites_it(tmp_path, capsys):
    from huggingface_hub import ModelCard

    from sae_training import TrainConfig, train

    torch.manual_seed(0)
    x = torch.relu(torch.randn(512, 32)) @ torch.randn(32, 16)
    cfg = TrainConfig(arch="topk", width=64, k=4, batch_size=64, epochs=2, lr=3e-3,
                      warmup_steps=2, log_interval=4, progress=False, autocast="none",
                      device="cpu", out_dir=str(tmp_path / "sae"))  # fmt: skip
    res = train(cfg, x, metadata={"model_name": "owner/tiny-mllm", "hook_point": "final_norm"})
    out = tmp_path / "sae"
    head = read_card_metadata(out)  # written by save_sae inside the trainer
    assert head["training_tokens"] == res.tokens == 1024 and head["training_steps"] == res.step
    sm = head["sae_metrics"]
    assert sm["fvu"] == pytest.approx(res.metrics["fvu"])
    assert sm["explained_variance"] == pytest.approx(1 - res.metrics["fvu"])
    assert sm["l0"] == pytest.approx(res.metrics["l0"]) == 4.0
    assert sm["dead_fraction"] == pytest.approx(res.metrics["dead"])
    assert head["sae_metrics_source"] == "training" and head["base_model"] == "owner/tiny-mllm"
    before = (out / "README.md").read_text()
    assert run_cli(["card", str(out)]) == 0  # now training.json is there too: its config
    after = (out / "README.md").read_text()
    assert "| learning rate | 0.003 |" in after and "learning rate" not in before
    assert ModelCard.load(out / "README.md").data.to_dict()["training_tokens"] == 1024
    assert f"wrote {out / 'README.md'}" in capsys.readouterr().out
    # held-out metrics of eval-sae win and say so
    write_eval(out, "reconstruction", {"metrics": {"fvu": 0.5, "explained_variance": 0.5, "l0": 3.5,
                                                   "dead_fraction": 0.25, "dense_fraction": 0.0}})  # fmt: skip
    write_card(out)
    head = read_card_metadata(out)
    assert head["sae_metrics"]["fvu"] == 0.5 and head["sae_metrics"]["dense_fraction"] == 0.0
    assert head["sae_metrics_source"] == "held-out evaluation (saeprobe eval-sae)"
    assert json.loads((out / "eval.json").read_text())["reconstruction"]["metrics"]["l0"] == 3.5
    # new weights in the folder: the old evaluation no longer describes them
    from saeprobe.sae import load_sae

    sae = load_sae(out)
    with torch.no_grad():
        sae.W_dec.mul_(1.01)
    sae.save(out)
    head = read_card_metadata(out)
    assert head["sae_metrics_source"] == "training" and head["sae_metrics"]["fvu"] == sm["fvu"]
    # and a training.json of another run (other step count) is not this checkpoint's
    sae.cfg.metadata["training"] = {"steps": 999, "tokens": 5, "metrics": {"fvu": 0.9}}
    sae.save(out)
    head = read_card_metadata(out)
    assert head["training_steps"] == 999 and head["sae_metrics"]["fvu"] == 0.9
    assert "learning rate" not in (out / "README.md").read_text()


def test_card_from_metrics_log_alone(tmp_path):
    save_sae(_sae(), tmp_path, card=False)
    records = [{"step": 10, "tokens": 640, "fvu": 0.4, "l0": 4.0, "dead": 0.5},
               {"step": 20, "tokens": 1280, "fvu": 0.3, "l0": 4.0, "dead": 0.25, "r2": 0.8}]  # fmt: skip
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    write_card(tmp_path)
    head = read_card_metadata(tmp_path)
    assert head["training_tokens"] == 1280 and head["training_steps"] == 20
    assert head["sae_metrics"] == {"fvu": 0.3, "explained_variance": 0.7, "l0": 4.0,
                                   "dead_fraction": 0.25, "r2_scalar_mean": 0.8}  # fmt: skip


def test_card_cli_refuses_a_non_sae_folder(tmp_path, capsys):
    assert run_cli(["card", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "is not an SAE folder" in err and len(err.splitlines()) == 1
