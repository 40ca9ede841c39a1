"""``saeprobe train`` end to end on a tiny activation store."""

from __future__ import annotations

import json

import pytest
import torch

from saeprobe.cli import main
from tests.helpers import cli_flags, tiny_store, train_argv

pytestmark = pytest.mark.usefixtures("one_thread")


def test_train_cli_end_to_end_resume_and_errors(tmp_path, capsys):
    n_tok = tiny_store(tmp_path / "store")
    out = tmp_path / "sae"
    argv = train_argv(tmp_path / "store", out, arch="topk", k=4, width=64, batch_size=96)
    argv += cli_flags(epochs=2, lr="3e-3", warmup_steps=2, ckpt_interval=4, log_interval=3)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    steps = 2 * -(-n_tok // 96)
    assert f"for {steps} steps / {2 * n_tok:,} tokens" in printed
    assert "fvu" in printed and "r2(paper)" in printed
    from saeprobe.sae import load_sae

    sae = load_sae(out)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (16, 64, 4)
    cfg = json.loads((out / "train_config.json").read_text())
    assert cfg["recipe"] == "default" and cfg["batch_size"] == 96 and cfg["lr"] == 3e-3
    assert cfg["auxk_coeff"] == 1 / 32 and cfg["drop_system"] is True
    summary = json.loads((out / "training.json").read_text())
    assert (
        summary["tokens"] == 2 * n_tok
        and summary["metadata"]["training"]["store_fingerprint"] == "fp-cli"
    )

    # --resume of a finished run: no extra steps, same weights
    assert main([*argv, "--resume"]) == 0
    assert f"for {steps} steps" in capsys.readouterr().out
    torch.testing.assert_close(load_sae(out).W_dec, sae.W_dec, rtol=0, atol=0)

    # a config file for another model: clear dimension error, exit code 2
    bad = tmp_path / "cfg.json"
    bad.write_text(
        json.dumps({"arch": "topk", "d_in": 3584, "width": 64, "k": 4, "recipe": "paper"})
    )
    rc = main(
        [
            "train",
            "--activations",
            str(tmp_path / "store"),
            "--config",
            str(bad),
            "--out",
            str(tmp_path / "bad"),
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "dimension mismatch: the data has d=16" in err and "d_in=3584" in err

    # paper recipe from a config file, --tokens instead of epochs
    good = tmp_path / "paper.json"
    good.write_text(json.dumps({"arch": "topk", "width": 32, "k": 3, "recipe": "paper"}))
    assert (
        main(
            [
                "train",
                "--activations",
                str(tmp_path / "store"),
                "--config",
                str(good),
                "--out",
                str(tmp_path / "paper"),
                "--tokens",
                "300",
                "--batch-size",
                "100",
                "--no-progress",
            ]
        )
        == 0
    )
    paper = json.loads((tmp_path / "paper" / "train_config.json").read_text())
    assert paper["l1_coeff"] == 0.01 and paper["lr"] == 8e-4 and paper["total_tokens"] == 300
    assert paper["epochs"] is None
    assert json.loads((tmp_path / "paper" / "training.json").read_text())["steps"] == 3
    assert load_sae(tmp_path / "paper").b_dec is None
