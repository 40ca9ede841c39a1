"""The defects of issue 9, one test each: nothing silently overwritten or mixed, checksummed
stores, every failure a one-line CLI error before any model loads or file is written."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest
import torch

import saeprobe.store.writer as writer_mod
from saeprobe.cli import main
from saeprobe.store import ActivationStore, load_pooled
from tests.helpers import tiny_store

TRAIN = ["--arch", "topk", "--k", "4", "--width", "32", "--batch-size", "64", "--lr", "3e-3",
         "--warmup-steps", "1", "--no-progress", "--device", "cpu", "--autocast", "none"]  # fmt: skip


def _train(store, out, *extra) -> int:
    return main(["train", "--activations", str(store), "--out", str(out), *TRAIN, *extra])


def _err(capsys) -> str:
    """The CLI's stderr: exactly one line, the error."""
    err = capsys.readouterr().err.strip().splitlines()
    err = [e for e in err if not e.startswith(("INFO", "WARNING")) and "it/s]" not in e]
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def qwen(tiny_models, capsys):
    """The tiny Qwen2-VL checkpoint (its build's progress output is not the CLI's)."""
    path = tiny_models("qwen2_vl")
    capsys.readouterr()
    return path


@pytest.fixture
def store(tmp_path):
    tiny_store(tmp_path / "store")
    return tmp_path / "store"


# ------------------------------------------------------------------ 1, 2, 9: training outputs
def test_finished_sae_is_not_overwritten_and_force_does_not_mix(store, tmp_path, capsys):
    out = tmp_path / "sae"
    assert _train(store, out, "--epochs", "2", "--ckpt-interval", "3", "--log-interval", "2") == 0
    first = (out / "sae_weights.safetensors").read_bytes()
    capsys.readouterr()
    assert _train(store, out, "--epochs", "1") == 2
    msg = _err(capsys)
    assert "already holds a trained SAE" in msg and "--force" in msg and "--resume" in msg
    assert (out / "sae_weights.safetensors").read_bytes() == first
    # --force replaces the run: no old checkpoint stays, metrics.jsonl holds only the new run
    assert _train(store, out, "--epochs", "1", "--seed", "5", "--force", "--log-interval", "1") == 0
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[0] == 1
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts and all(int(c[5:14]) <= steps[-1] for c in ckpts)


def test_resume_checks_the_whole_config_and_the_data(store, tmp_path, capsys):
    out = tmp_path / "sae"
    assert _train(store, out, "--epochs", "1", "--ckpt-interval", "2") == 0
    capsys.readouterr()
    other = tmp_path / "other"
    tiny_store(other, seed=9, fingerprint="fp-other")
    assert _train(other, out, "--epochs", "1", "--resume", "--batch-size", "32", "--seed", "3",
                  "--lr", "1e-3") == 2  # fmt: skip
    msg = _err(capsys)
    for piece in ("batch_size 64 (checkpoint) vs 32 (now)", "seed 0 (checkpoint) vs 3 (now)",
                  "lr 0.003 (checkpoint) vs 0.001 (now)", "data fingerprint 'fp-cli'"):  # fmt: skip
        assert piece in msg, msg


def test_truncated_newest_checkpoint_falls_back_to_the_previous(store, tmp_path, caplog):
    from sae_training import TensorSource, train
    from sae_training.checkpoint import list_checkpoints
    from tests.helpers import train_config

    out = tmp_path / "sae"
    x = ActivationStore(store).read_all(fields=("acts",)).acts.float()
    cfg = train_config(out_dir=str(out), epochs=4, ckpt_interval=3, keep_checkpoints=3)
    train(cfg, TensorSource(x, seed=1))
    (_, newest), (step_old, _) = list_checkpoints(out)[-1], list_checkpoints(out)[-2]
    newest.write_bytes(newest.read_bytes()[:100])
    res = train(cfg, TensorSource(x, seed=1), resume=True)
    assert newest.name in caplog.text and "falling back" in caplog.text
    assert res.step > step_old


def test_empty_store_and_bad_limits_are_refused(tmp_path, capsys, qwen, photos):
    from saeprobe.store import ActivationStoreWriter

    empty = tmp_path / "empty"
    ActivationStoreWriter(empty, d=16, dtype="fp32").close()
    assert _train(empty, tmp_path / "sae", "--epochs", "1") == 2
    assert "holds no tokens" in _err(capsys)
    model = qwen
    for bad in ("0", "-5"):
        code = main(["capture", "--model", str(model), "--data", str(tmp_path), "--out",
                     str(tmp_path / f"s{bad}"), "--limit", bad])  # fmt: skip
        assert code == 2
        assert "--limit must be a positive number of items" in _err(capsys)
        assert not (tmp_path / f"s{bad}").exists()
    missing = tmp_path / "no" / "such" / "model"
    code = main(
        ["capture", "--model", str(missing), "--data", str(photos), "--out", str(tmp_path / "x")]
    )
    assert code == 2 and f"model folder {missing} does not exist" in _err(capsys)


# ------------------------------------------------------------------ capture: 3, 6, 7, 8, 11
@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    from saeprobe.testing import write_photo_folder as make_folder

    return make_folder(tmp_path_factory.mktemp("photos") / "photos")


def _capture(model, data, out, *extra) -> int:
    return main(["capture", "--model", str(model), "--data", str(data), "--out", str(out),
                 "--dtype", "fp32", "--batch-size", "2", "--shard-tokens", "40", "--no-progress",
                 *extra])  # fmt: skip


def test_repair_recreates_damaged_shards_and_pooled_rows_stay_one_per_item(qwen, photos, tmp_path):
    model = qwen
    assert _capture(model, photos, tmp_path / "ref") == 0
    assert _capture(model, photos, tmp_path / "s") == 0
    shards = sorted((tmp_path / "s").glob("shard-*"))
    assert len(shards) >= 3
    shards[1].unlink()
    data = bytearray(shards[2].read_bytes())
    data[-5] ^= 1  # one flipped bit in the activations
    shards[2].write_bytes(bytes(data))
    assert _capture(model, photos, tmp_path / "s") == 0
    for a, b in zip(
        sorted((tmp_path / "ref").glob("shard-*")),
        sorted((tmp_path / "s").glob("shard-*")),
        strict=True,
    ):
        assert a.read_bytes() == b.read_bytes()
    pooled, ids = load_pooled(tmp_path / "s")
    ref, ref_ids = load_pooled(tmp_path / "ref")
    n_items = ActivationStore(tmp_path / "ref").n_samples
    assert ids == ref_ids and len(ids) == n_items == len(set(ids))
    for k in ref:
        assert torch.equal(pooled[k], ref[k])


def test_path_spelling_does_not_change_the_fingerprint(qwen, photos, tmp_path, capsys, monkeypatch):
    model = qwen
    monkeypatch.chdir(photos.parent)
    assert _capture(model, "photos", tmp_path / "s") == 0
    assert _capture(model, photos.resolve(), tmp_path / "s") == 0  # same capture: complete
    capsys.readouterr()
    assert _capture(model, photos, tmp_path / "s", "--pool", "last") == 2
    msg = _err(capsys)
    assert "settings.pools ['mean'] (stored) vs ['last'] (given)" in msg
    assert "resume it with the original settings" in msg


def test_bad_arguments_write_nothing_and_fail_before_the_model_loads(
    qwen, photos, tmp_path, capsys, monkeypatch
):
    import saeprobe.models

    model = qwen
    loaded = []
    real = saeprobe.models.load_model
    monkeypatch.setattr(
        saeprobe.models, "load_model", lambda *a, **k: loaded.append(1) or real(*a, **k)
    )
    for extra, words in ((["--batch-size", "0"], "--batch-size must be >= 1"),
                         (["--pool", "maxx"], "unknown pooling ['maxx']"),
                         (["--layers", "42"], "out of range"),
                         (["--layers", "final_nrm"], "unknown hook point")):  # fmt: skip
        assert _capture(model, photos, tmp_path / "s", *extra) == 2
        assert words in _err(capsys)
        assert not (tmp_path / "s").exists() and not loaded
    assert _capture(model, tmp_path / "missing", tmp_path / "s") == 2
    assert "does not exist" in _err(capsys) and not loaded
    assert _capture(model, photos, tmp_path / "s") == 0  # the corrected run is not blocked


def test_several_hook_points_name_each_store_and_outputs_get_the_usual_mode(
    qwen, photos, tmp_path, capsys
):
    model = qwen
    out = tmp_path / "multi"
    assert _capture(model, photos, out, "--layers", "final_norm,0") == 0
    printed = capsys.readouterr().out
    assert f"store (final_norm): {out / 'final_norm'}" in printed
    assert f"store (resid_post.0): {out / 'resid_post.0'}" in printed
    mask = os.umask(0)
    os.umask(mask)
    for f in [*(out / "final_norm").iterdir(), out / "pooled.safetensors"]:
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f
    assert _train(out, tmp_path / "sae", "--epochs", "1") == 2
    msg = _err(capsys)
    assert (
        "one store per hook point (final_norm, resid_post.0)" in msg
        and str(out / "final_norm") in msg
    )


def test_disk_full_and_store_errors_are_one_line(qwen, photos, tmp_path, capsys, monkeypatch):
    model = qwen

    def full(path, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(writer_mod, "_write_file", full)
    assert _capture(model, photos, tmp_path / "s") == 2
    msg = _err(capsys)
    assert msg.startswith("saeprobe capture: error: no space left on device writing shard")
    assert "MiB free" in msg
    monkeypatch.undo()
    # an unfinished store (the capture above): train names it in one line
    assert _train(tmp_path / "s", tmp_path / "sae", "--epochs", "1") == 2
    assert "is not finished" in _err(capsys)
    # a corrupted shard: train stops with one line naming it
    assert _capture(model, photos, tmp_path / "s") == 0
    shard = sorted((tmp_path / "s").glob("shard-*"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    assert _train(tmp_path / "s", tmp_path / "sae", "--epochs", "1") == 2
    msg = _err(capsys)
    assert shard.name in msg and "checksum" in msg
    # `store verify` says which shard to recapture
    assert main(["store", "verify", str(tmp_path / "s")]) == 1
    out = capsys.readouterr().out
    assert shard.name in out and "rerun the same capture" in out


def test_train_checkpoint_on_a_full_disk(store, tmp_path, capsys, monkeypatch):
    import saeprobe.atomic as atomic_mod

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    assert _train(store, tmp_path / "sae", "--epochs", "1", "--ckpt-interval", "1") == 2
    msg = _err(capsys)
    assert "no space left on device writing checkpoint" in msg and "step_000000001.pt" in msg
    assert not [
        p for p in (tmp_path / "sae" / "checkpoints").iterdir() if atomic_mod.is_temp_file(p)
    ]


# ------------------------------------------------------------------ analyze: 4, 6
def test_analyze_checks_item_ids_and_never_leaves_a_half_written_folder(
    qwen, photos, tmp_path, capsys, monkeypatch
):
    from saeprobe.testing import PHOTOS
    from saeprobe.testing import write_photo_folder as make_folder

    model = qwen
    assert _capture(model, photos, tmp_path / "cap") == 0
    assert _train(tmp_path / "cap", tmp_path / "sae", "--epochs", "2") == 0
    other = tmp_path / "other"
    make_folder(other)
    captions = (other / "captions.csv").read_text().splitlines()
    first = next(iter(PHOTOS))
    (other / "captions.csv").write_text(
        "\n".join([captions[0], *[c for c in captions[1:] if not c.startswith(first)]]) + "\n"
    )
    capsys.readouterr()
    base = ["analyze", "--sae", str(tmp_path / "sae"), "--activations", str(tmp_path / "cap"),
            "--pairs", str(tmp_path / "cap"), "--no-progress", "--ablation-steps", "0,1"]  # fmt: skip
    assert main([*base, "--data", str(other), "--out", str(tmp_path / "r")]) == 2
    msg = _err(capsys)
    assert "does not match the data source" in msg and not (tmp_path / "r").exists()
    import pyarrow.parquet as pq

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    assert main([*base, "--data", str(photos), "--out", str(tmp_path / "r")]) == 2
    assert "no space left on device" in _err(capsys)
    assert not (tmp_path / "r").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".r")]
    monkeypatch.undo()
    assert main([*base, "--data", str(photos), "--out", str(tmp_path / "r")]) == 0
    assert main([*base, "--data", str(photos), "--out", str(tmp_path / "r")]) == 2
    assert "already exists; pass --force" in _err(capsys)


def test_retrieve_alpha_is_checked_before_embedding(tmp_path, capsys, monkeypatch):
    import saeprobe.models

    monkeypatch.setattr(saeprobe.models, "load_model", lambda *a, **k: pytest.fail("model loaded"))
    code = main(["retrieve", "--model", "x", "--data", str(tmp_path), "--alpha", "-1"])
    assert code == 2 and "alpha (ReAlign shrinkage) must lie in [0, 1], got -1.0" in _err(capsys)
    Path(tmp_path / "res.json").write_text("{}")
    code = main(
        ["retrieve", "--model", "x", "--data", str(tmp_path), "--out", str(tmp_path / "res.json")]
    )
    assert code == 2 and "already exists; pass --force" in _err(capsys)
