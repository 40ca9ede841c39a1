"""``--run RUN --name MODEL`` on capture -> train -> analyze -> retrieve: every stage reads the
previous one from the run folder, writes its own part there, and the readers (RunFolder,
the explorer) find all of it."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from saeprobe.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen(tiny_models):
    return tiny_models("qwen2_vl")


def _photos(folder, n=6):
    from skimage import data

    folder.mkdir()
    names = ["astronaut", "chelsea", "coffee", "rocket", "camera", "moon"][:n]
    rows = []
    for name in names:
        img = getattr(data, name)()
        Image.fromarray(img).convert("RGB").resize((40, 40)).save(folder / f"{name}.png")
        rows.append(json.dumps({"image": f"{name}.png", "caption": f"a photo of the {name}"}))
    (folder / "captions.jsonl").write_text("\n".join(rows) + "\n")
    return folder


def test_run_flags_chain(qwen, tmp_path, capsys):
    from saeprobe.explorer import RunExplorer
    from saeprobe.run import RunFolder
    from saeprobe.sae import load_sae
    from saeprobe.store import ActivationStore
    from tests.helpers import build_task_folder

    run = tmp_path / "run"
    photos = _photos(tmp_path / "photos")
    capture = ["capture", "--model", str(qwen), "--data", str(photos), "--run", str(run)]
    assert main([*capture, "--name", "tiny", "--layers", "final_norm", "--no-progress"]) == 0
    folder = RunFolder(run)
    assert folder.models == ["tiny"]
    store = folder.store_path("tiny")
    assert store == run / "models" / "tiny" / "store"

    train = ["train", "--run", str(run), "--arch", "topk", "--k", "4", "--width", "32"]
    assert main([*train, "--batch-size", "32", "--epochs", "1", "--no-progress"]) == 0
    sae_dir = folder.sae_path("tiny")
    assert sae_dir == run / "models" / "tiny" / "sae"
    sae = load_sae(sae_dir)
    assert sae.cfg.d_in == ActivationStore(store).d and sae.cfg.d_sae == 32

    assert main(["analyze", "--run", str(run), "--no-progress"]) == 0
    features = folder.features_path("tiny")
    import pyarrow.parquet as pq

    assert pq.read_table(features).num_rows == 32

    task_dir = build_task_folder(tmp_path, 1, n_queries=4, n_corpus=6, name="t2i")
    retrieve = ["retrieve", "--model", str(qwen), "--data", str(task_dir), "--run", str(run)]
    assert main([*retrieve, "--name", "tiny", "--cache", "none"]) == 0
    assert RunFolder(run).tasks("tiny") == ["t2i"]
    t = RunFolder(run).task("tiny", "t2i")
    assert t.queries.shape[0] == 4 and t.candidates.shape[0] == 6
    saved = json.loads((run / "models/tiny/tasks/t2i/results.json").read_text())
    assert saved["task"] == 1 and set(saved["results"]) >= {"base", "realign"}
    assert torch.allclose(t.queries.norm(dim=1), torch.ones(4), atol=1e-5)

    ex = RunExplorer(run)
    card = ex.card("tiny", "t2i", 0)
    assert card["id"] == 0 and card["row"]["energy"] is not None
    capsys.readouterr()

    # an SAE written elsewhere is recorded in model.json's parts and found by the readers
    other = tmp_path / "elsewhere"
    assert main([*train, "--out", str(other), "--batch-size", "32", "--epochs", "1",
                 "--no-progress"]) == 0  # fmt: skip
    assert RunFolder(run).sae_path("tiny") == other.resolve()

    # two models: --name is needed, one line says so
    capture2 = ["capture", "--model", str(qwen), "--data", str(photos), "--run", str(run)]
    assert main([*capture2, "--name", "tiny2", "--layers", "final_norm", "--no-progress"]) == 0
    capsys.readouterr()
    assert main([*train, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pass --name MODEL" in err and "tiny, tiny2" in err and "\n" not in err
    # nothing to read from: a one-line error naming the missing part and how to make it
    assert main(["analyze", "--run", str(run), "--name", "tiny2"]) == 2
    err = capsys.readouterr().err.strip()
    assert "sae is missing" in err and "saeprobe train" in err
    # no --run and no --activations
    assert main(["train", "--out", str(tmp_path / "x")]) == 2
    assert "pass --activations" in capsys.readouterr().err


def test_several_hook_points_become_one_model_per_layer(qwen, tmp_path, capsys):
    """``capture --layers a,b --run RUN --name M`` registers ``M-a`` and ``M-b`` (the explorer
    menu lists each with its hook point); the parts are recorded relative to the run, so a
    copied run folder still finds them."""
    import shutil

    from saeprobe.explorer import RunExplorer
    from saeprobe.run import RunFolder
    from saeprobe.store import ActivationStore

    run = tmp_path / "run"
    photos = _photos(tmp_path / "photos", n=4)
    argv = ["capture", "--model", str(qwen), "--data", str(photos), "--run", str(run)]
    assert main([*argv, "--name", "tiny", "--layers", "1,final_norm", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    names = ["tiny-resid_post.1", "tiny-final_norm"]
    for name in names:
        assert f"as model {name!r}" in printed
    moved = tmp_path / "moved"
    shutil.move(run, moved)
    folder = RunFolder(moved)
    assert sorted(folder.models) == sorted(names)
    for name in names:
        hook = name.removeprefix("tiny-")
        meta = folder.model(name)
        assert meta["hook_point"] == hook
        assert not meta["parts"]["store"].startswith("/")
        store = folder.store_path(name)
        assert store.is_relative_to(moved) and ActivationStore(store).metadata["hook_point"] == hook
    menu = {m["name"]: m["hook_point"] for m in RunExplorer(moved).models()}
    assert menu == {"tiny-resid_post.1": "resid_post.1", "tiny-final_norm": "final_norm"}
    train = ["train", "--run", str(moved), "--name", "tiny-resid_post.1", "--arch", "topk"]
    assert main([*train, "--k", "4", "--width", "32", "--epochs", "1", "--no-progress"]) == 0
    assert (moved / "models" / "tiny-resid_post.1" / "sae" / "cfg.json").is_file()
    # retrieve takes the registered model's layer, and refuses another one before embedding
    from tests.helpers import build_task_folder

    task_dir = build_task_folder(tmp_path, 1, n_queries=3, n_corpus=4, name="t2i")
    retrieve = ["retrieve", "--model", str(qwen), "--data", str(task_dir), "--run", str(moved)]
    retrieve += ["--name", "tiny-resid_post.1", "--cache", "none"]
    capsys.readouterr()
    assert main(retrieve) == 0
    assert "layer=resid_post.1" in capsys.readouterr().out
    saved = json.loads((moved / "models/tiny-resid_post.1/tasks/t2i/results.json").read_text())
    assert saved["layer"] == "resid_post.1"
    assert main([*retrieve, "--layer", "final_norm", "--task-name", "other"]) == 2
    err = capsys.readouterr().err.strip()
    assert "is at hook point resid_post.1, not final_norm" in err and "\n" not in err
    assert not (moved / "models/tiny-resid_post.1/tasks/other").exists()
    # a part outside the run is recorded absolute; written back in its default place, the
    # record goes (the reader must not follow a stale path)
    from saeprobe.run import RunWriter

    writer, name = RunWriter(moved), "tiny-final_norm"
    writer.set_part(name, "sae", tmp_path / "elsewhere")
    assert RunFolder(moved).model(name)["parts"]["sae"] == str((tmp_path / "elsewhere").resolve())
    writer.set_part(name, "sae", moved / "models" / name / "sae")
    assert "sae" not in RunFolder(moved).model(name)["parts"]
