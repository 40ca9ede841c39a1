"""Capture into activation stores: equality with in-memory capture, kill-and-resume, pooled."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from saeprobe.capture import capture
from saeprobe.capture_store import load_pooled
from saeprobe.models import load_model
from saeprobe.store import ActivationStore, StoreMismatchError

pytestmark = pytest.mark.integration

ITEMS_CODE = textwrap.dedent(
    """
    from PIL import Image
    from skimage import data
    from saeprobe import Item

    def make_items(n):
        photos = [data.astronaut(), data.chelsea(), data.coffee()]
        words = "a cat a dog a man riding a wave on top of a surfboard near the sea".split()
        out = []
        for i in range(n):
            if i % 3 == 1:
                out.append(Item(f"img{i}", image=Image.fromarray(photos[i % 3]).resize((32 + 8 * (i % 4), 40))))
            else:
                out.append(Item(f"txt{i}", text=" ".join(words[: 3 + (i * 5) % 12])))
        return out
    """
)
namespace: dict = {}
exec(ITEMS_CODE, namespace)
make_items = namespace["make_items"]


@pytest.fixture(scope="module")
def model_dir(tiny_models):
    return tiny_models("qwen2_vl")


@pytest.fixture(scope="module")
def adapter(model_dir):
    return load_model(str(model_dir), dtype="float32")


def test_store_equals_memory(adapter, tmp_path):
    items = make_items(7)
    mem = capture(
        adapter, items, ["final_norm", "0"], batch_size=3, pools=("mean", "last"), progress=False
    )
    res = capture(
        adapter,
        items,
        ["final_norm", "0"],
        batch_size=3,
        pools=("mean", "last"),
        out=str(tmp_path / "s"),
        dtype="float32",
        progress=False,
        shard_tokens=64,
    )
    assert res.n_tokens == mem.n_tokens and res.n_items == 7
    assert res.bytes_written > 0
    for name in ("final_norm", "resid_post.0"):
        store = ActivationStore(tmp_path / "s" / name)
        assert store.n_tokens == mem.n_tokens and store.d == adapter.d_model
        assert len(store.shards) > 1
        t = store.read_all()
        acts = t["acts"] if isinstance(t, dict) else t.acts
        sample_id = t["sample_id"] if isinstance(t, dict) else t.sample_id
        modality = t["modality"] if isinstance(t, dict) else t.modality
        assert torch.equal(acts, mem.acts[name])
        assert torch.equal(sample_id, mem.sample_id)
        assert torch.equal(modality, mem.modality)
        assert store.modality_counts == {k: v for k, v in mem.modality_counts.items()}
    pooled, ids = load_pooled(tmp_path / "s")
    assert ids == [it.id for it in items]
    assert torch.equal(pooled["final_norm.mean"], mem.pooled["final_norm"]["mean"])
    assert torch.equal(pooled["resid_post.0.last"], mem.pooled["resid_post.0"]["last"])


def test_mismatched_store_is_refused(adapter, tmp_path):
    items = make_items(3)
    capture(adapter, items, "final_norm", out=str(tmp_path / "s"), dtype="float32", progress=False)
    with pytest.raises(StoreMismatchError):
        capture(
            adapter, items, "final_norm", out=str(tmp_path / "s"), dtype="float16", progress=False
        )


SCRIPT = ITEMS_CODE + textwrap.dedent(
    """
    import sys, time
    from saeprobe.capture import capture
    from saeprobe.models import load_model
    adapter = load_model(sys.argv[1], dtype="float32")
    items = make_items(16)
    slow = len(sys.argv) > 3
    def gen():
        for i, it in enumerate(items):
            if slow and i >= 6:
                time.sleep(0.25)
            yield it
    capture(adapter, gen(), ["final_norm", "1"], out=sys.argv[2], batch_size=2, dtype="float32",
            shard_tokens=80, progress=False, total=len(items))
    """
)


def test_kill_and_resume_equals_uninterrupted(model_dir, tmp_path):
    script = tmp_path / "cap.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run([sys.executable, str(script), str(model_dir), str(ref)], check=True, env=env)
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(model_dir), str(out), "slow"], env=env
    )
    deadline = time.time() + 120
    while (
        time.time() < deadline and len(list((out / "final_norm").glob("shard-*.safetensors"))) < 2
    ):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert len(list((out / "final_norm").glob("shard-*.safetensors"))) >= 2
    assert not (out / "pooled.safetensors").exists()
    subprocess.run([sys.executable, str(script), str(model_dir), str(out)], check=True, env=env)
    for name in ("final_norm", "resid_post.1"):
        a, b = sorted((ref / name).glob("shard-*")), sorted((out / name).glob("shard-*"))
        assert [p.name for p in a] == [p.name for p in b]
        for x, y in zip(a, b, strict=True):
            assert x.read_bytes() == y.read_bytes(), f"{name}/{x.name} differs after resume"
    pa, ia = load_pooled(ref)
    pb, ib = load_pooled(out)
    assert ia == ib
    for k in pa:
        assert torch.equal(pa[k], pb[k])


def _capture_cli(model_dir, folder, out, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m saeprobe capture`` in a subprocess (as a user would)."""
    cmd = [sys.executable, "-m", "saeprobe", "capture", "--model", str(model_dir)]
    cmd += ["--data", str(folder), "--out", str(out), *args]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def test_cli_capture_summary(model_dir, tmp_path):
    from PIL import Image

    folder = tmp_path / "data"
    folder.mkdir()
    for i, photo in enumerate(["astronaut", "chelsea"]):
        from skimage import data

        Image.fromarray(getattr(data, photo)()).resize((40, 40)).save(folder / f"{photo}.png")
        del i
    (folder / "captions.csv").write_text(
        "image,caption\nastronaut.png,A woman in a space suit.\nchelsea.png,A ginger cat.\n"
        "chelsea.png,A cat looking to the side.\n"
    )
    out = tmp_path / "store"
    proc = _capture_cli(
        model_dir, folder, out, "--layers", "final_norm", "--dtype", "float32", "--no-progress"
    )
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stdout and "image=" in proc.stdout
    store = ActivationStore(out)
    assert store.n_tokens > 0 and store.modality_counts["image"] > 0
    bad = _capture_cli(model_dir, folder, tmp_path / "bad", "--layers", "42")
    assert bad.returncode == 2
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("saeprobe capture: error:") and "out of range" in last
    assert not Path(tmp_path / "bad" / "manifest.json").exists()
