"""Kill -9 a training run after a checkpoint, resume it, and get bit-identical weights."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from sae_training import TrainConfig
from sae_training.checkpoint import list_checkpoints, load_checkpoint
from sae_training.sources import TensorSource
from sae_training.trainer import train
from tests.helpers import topk_run_kwargs

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parents[2]

# The default recipe exercises every piece of resumable state: AuxK with a dead mask
# (counters), b_dec from data, LR warm-up and decay, Adam moments, mid-epoch data position.
CFG = topk_run_kwargs(
    epochs=3, warmup_steps=10, dead_window_tokens=64, ckpt_interval=5, keep_checkpoints=2, seed=3
)

CHILD = textwrap.dedent(
    """
    import sys, time, torch
    torch.set_num_threads(1)
    from sae_training import TrainConfig
    from sae_training.sources import TensorSource
    from sae_training.trainer import train

    class Slow(TensorSource):
        def batches(self, *a, **k):
            for b in super().batches(*a, **k):
                time.sleep(0.06)
                yield b

    x = torch.load(sys.argv[1], weights_only=True)
    cfg = TrainConfig(out_dir=sys.argv[2], **{cfg!r})
    train(cfg, Slow(x, seed=3))
    """
)


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    D = torch.randn(96, 16, generator=g)
    D = D / D.norm(dim=1, keepdim=True)
    z = torch.rand(1024, 96, generator=g).pow(12) * 3  # sparse-ish non-negative codes
    return z @ D


def test_kill_9_then_resume_is_bit_identical(tmp_path):
    x = _data()
    torch.save(x, tmp_path / "x.pt")
    (tmp_path / "child.py").write_text(CHILD.format(cfg=CFG))
    run_dir = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(tmp_path / "child.py"), str(tmp_path / "x.pt"), str(run_dir)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    deadline = time.time() + 60
    try:
        while time.time() < deadline:
            done = [s for s, _ in list_checkpoints(run_dir)]
            if done and max(done) >= 10:
                break
            if proc.poll() is not None:
                pytest.fail(f"child ended early: {proc.stdout.read().decode()[-2000:]}")
            time.sleep(0.02)
        else:
            pytest.fail("no checkpoint at step >= 10 within 60 s")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (run_dir / "sae_weights.safetensors").exists()  # it really died mid-run
    killed_at = max(s for s, _ in list_checkpoints(run_dir))
    assert killed_at < 48  # 3 epochs x 16 batches

    cfg = TrainConfig(out_dir=str(run_dir), **CFG)
    resumed = train(cfg, TensorSource(x, seed=3), resume=True)
    full = train(cfg.replace(out_dir=str(tmp_path / "full")), TensorSource(x, seed=3))

    assert resumed.step == full.step == 48 and resumed.tokens == full.tokens
    a, b = resumed.sae.state_dict(), full.sae.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"{name} differs after kill + resume"
    # the checkpointed state (optimizer moments, dead counters) is identical too
    ca = load_checkpoint(list_checkpoints(run_dir)[-1][1])
    cb = load_checkpoint(list_checkpoints(tmp_path / "full")[-1][1])
    assert torch.equal(ca["dead"]["since"], cb["dead"]["since"])
    assert any(r.get("dead", 0) > 0 for r in full.history)  # AuxK had dead latents to revive
    for k, st in ca["optimizer"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, cb["optimizer"]["state"][k][name]), (k, name)
    # the metrics log was cut back to the checkpoint and continued without duplicates
    steps = [
        json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == [*range(5, 48, 5), 48]


def test_resume_without_checkpoint_starts_fresh_and_rejects_other_settings(tmp_path):
    x = _data()[:256]
    cfg = TrainConfig(out_dir=str(tmp_path / "r"), **{**CFG, "epochs": 1})
    first = train(cfg, TensorSource(x, seed=3), resume=True)  # nothing to resume: fresh run
    assert first.step == 4
    with pytest.raises(ValueError, match=r"width 64 \(checkpoint\) vs 32 \(now\)"):
        train(cfg.replace(width=32), TensorSource(x, seed=3), resume=True)
    # resuming a finished run does no more steps and keeps the weights
    again = train(cfg, TensorSource(x, seed=3), resume=True)
    assert again.step == 4
    for (name, t), u in zip(
        first.sae.state_dict().items(), again.sae.state_dict().values(), strict=True
    ):
        assert torch.equal(t, u), name
