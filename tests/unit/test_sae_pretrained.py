"""The registry of published SAEs: its facts, ``load_sae(NAME)`` / ``saeprobe convert NAME OUT``
through the real ``huggingface_hub`` cache code path (a cache folder laid out here, offline),
``saeprobe saes list``."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from saeprobe.sae import SAEConfig, create_sae, load_sae
from saeprobe.sae.pretrained import (
    PretrainedNotCached,
    UnknownPretrainedSAE,
    get_pretrained,
    is_pretrained_name,
    pretrained_saes,
)

REPO = "Heinz217/mllm-retrieval-analysis-sae"
SHA = "0123456789abcdef0123456789abcdef01234567"
D, C = 12, 64  # a small fake: the paper's k=50 needs c >= 50


def run_cli(argv: list[str]) -> int:
    """``saeprobe ARGV`` through ``saeprobe.cli.main`` when the sub-command is registered in
    ``COMMANDS``, else through the module's own parser with the same error handling."""
    from saeprobe import cli
    from saeprobe.errors import SaeprobeError

    name = argv[0].replace("-", "_")
    if name in cli.COMMANDS:
        return cli.main(argv)
    mod = importlib.import_module(f"saeprobe.cli.{name}")
    parser = argparse.ArgumentParser(prog="saeprobe")
    mod.add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (SaeprobeError, ValueError, OSError) as exc:
        print(f"saeprobe {argv[0]}: error: {exc}", file=sys.stderr)
        return 2


def test_registry_lists_the_papers_six_checkpoints():
    table = pretrained_saes()
    assert list(table) == [
        "paper/qwen2-vl-7b-instruct",
        "paper/qwen3-vl-8b-instruct",
        "paper/paligemma2-3b-mix-224",
        "paper/chameleon-7b",
        "paper/clip-vit-base-patch32",
        "paper/siglip2-base-patch16-512",
    ]
    facts = {n: (e.base_model, e.d_in, e.d_sae, e.k, e.hook_point) for n, e in table.items()}
    assert facts["paper/qwen2-vl-7b-instruct"] == (
        "Qwen/Qwen2-VL-7B-Instruct",
        3584,
        32768,
        50,
        "final_norm",
    )
    assert facts["paper/qwen3-vl-8b-instruct"][1:] == (4096, 32768, 50, "final_norm")
    assert facts["paper/paligemma2-3b-mix-224"][:3] == ("google/paligemma2-3b-mix-224", 2304, 20736)
    assert facts["paper/chameleon-7b"][:3] == ("facebook/chameleon-7b", 4096, 32768)
    assert {e.repo_id for e in table.values()} == {REPO}
    assert table["paper/qwen2-vl-7b-instruct"].filename == "sae_Qwen2-VL-7B-Instruct.pt"
    assert table["paper/siglip2-base-patch16-512"].d_in is None  # not published: from the file
    assert all(e.arch == "topk" and e.format == "overcomplete.TopKSAE" for e in table.values())
    assert is_pretrained_name("paper/chameleon-7b") and not is_pretrained_name("runs/sae")
    with pytest.raises(UnknownPretrainedSAE, match="known: paper/qwen2-vl-7b-instruct"):
        get_pretrained("paper/qwen9")


def _reference_sae() -> torch.nn.Module:
    torch.manual_seed(3)
    sae = create_sae(SAEConfig(arch="topk", d_in=D, d_sae=C, k=50))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.3)
    return sae


def _hub_cache(root: Path, sae) -> Path:
    """A Hugging Face cache holding one paper-format file, laid out as huggingface_hub does
    (blobs/<etag>, snapshots/<commit>/<file> -> blob symlink, refs/main)."""
    repo = root / ("models--" + REPO.replace("/", "--"))
    blob = repo / "blobs" / "e7a9c0ffee"
    blob.parent.mkdir(parents=True)
    state = {
        "encoder.final_block.0.weight": sae.W_enc.detach().clone(),
        "encoder.final_block.0.bias": sae.b_enc.detach().clone(),
        "dictionary._weights": 2.5 * sae.W_dec.detach().clone(),  # not unit norm on disk
        "dictionary.multiplier": torch.tensor(0.0),
    }
    opt = {"state": {}, "param_groups": [{"lr": 8e-4, "params": [0, 1, 2]}]}
    torch.save({"model_state": state, "optimizer_state": opt, "logs": {"r2": [0.5]}}, blob)
    snap = repo / "snapshots" / SHA
    snap.mkdir(parents=True)
    (snap / "sae_Qwen2-VL-7B-Instruct.pt").symlink_to(os.path.relpath(blob, snap))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(SHA)
    return root


def test_load_sae_by_name_through_the_offline_hf_cache(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # conftest sets the env
    ref = _reference_sae()
    cache = _hub_cache(tmp_path / "hub", ref)
    with caplog.at_level(logging.WARNING, logger="saeprobe.sae.io"):
        sae = load_sae("paper/qwen2-vl-7b-instruct", cache_dir=cache)
    x = torch.randn(7, D)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), ref.encode(x), rtol=1e-5, atol=1e-6)
    meta = sae.cfg.metadata
    assert sae.cfg.k == 50 and meta["model_name"] == "Qwen/Qwen2-VL-7B-Instruct"
    assert meta["hook_point"] == "final_norm" and meta["pretrained"] == "paper/qwen2-vl-7b-instruct"
    assert meta["source"] == f"hf://{REPO}/sae_Qwen2-VL-7B-Instruct.pt" and meta["license"] == "mit"
    # the small fake is not the published width: said, not silently accepted
    assert "d_in=12 but the registry says 3584" in caplog.text
    with pytest.raises(PretrainedNotCached, match="not in the Hugging Face cache"):
        load_sae("paper/chameleon-7b", cache_dir=cache)


def test_convert_by_name_honours_hf_env_in_a_fresh_process(tmp_path):
    """``saeprobe convert NAME OUT`` with only HF_HUB_CACHE / HF_HUB_OFFLINE set (read by
    huggingface_hub at import, as a user's shell would set them)."""
    from saeprobe.sae.card import read_card_metadata

    ref = _reference_sae()
    cache = _hub_cache(tmp_path / "hub", ref)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "saeprobe", "convert", "paper/qwen2-vl-7b-instruct", str(out)],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    printed = json.loads(proc.stdout.strip().splitlines()[-1])
    assert printed["model_name"] == "Qwen/Qwen2-VL-7B-Instruct" and printed["k"] == 50
    back = load_sae(out)
    x = torch.randn(5, D)
    with torch.no_grad():
        torch.testing.assert_close(back.encode(x), ref.encode(x), rtol=1e-5, atol=1e-6)
    head = read_card_metadata(out)
    assert head["base_model"] == "Qwen/Qwen2-VL-7B-Instruct" and head["library_name"] == "saeprobe"
    assert head["license"] == "mit" and head["hook_point"] == "final_norm" and head["k"] == 50
    assert head["datasets"] == ["lmms-lab/COCO-Caption"]
    card = (out / "README.md").read_text()
    assert "Generative Giants, Retrieval Weaklings" in card and f"hf://{REPO}" in card
    env.pop("HF_HUB_CACHE")
    env["HF_HOME"] = str(tmp_path / "empty_home")
    proc = subprocess.run(
        [sys.executable, "-m", "saeprobe", "convert", "paper/qwen2-vl-7b-instruct", str(tmp_path / "o2")],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2 and "not in the Hugging Face cache" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_saes_list_and_show(capsys):
    assert run_cli(["saes", "list"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("paper/")]
    assert len(rows) == 6
    assert rows[0].split()[:5] == [
        "paper/qwen2-vl-7b-instruct",
        "Qwen/Qwen2-VL-7B-Instruct",
        "3584",
        "32768",
        "50",
    ]
    assert "20736" in rows[2] and "?" in rows[4]  # CLIP's width is not published
    assert run_cli(["saes", "list", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["name"] for r in lines] == list(pretrained_saes())
    assert run_cli(["saes", "show", "paper/paligemma2-3b-mix-224"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["d_sae"] == 20736 and shown["release"]["repo_id"] == REPO
    assert run_cli(["saes", "show", "paper/nope"]) == 2
    assert "unknown pretrained SAE" in capsys.readouterr().err
