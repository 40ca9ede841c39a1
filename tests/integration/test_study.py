"""``saeprobe study`` on tiny saved models (an MLLM and a dual encoder) and photos: the run
folder, ``results.json`` (schema, finite in-range numbers), the report, resuming."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from analysis import TAGS
from saeprobe import Item
from saeprobe.cli import main
from saeprobe.run import RunFolder
from saeprobe.study import check_results


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_models):
    from saeprobe.data.mbeir import write_task_folder
    from saeprobe.testing import PHOTOS
    from saeprobe.testing import write_photo_folder as make_folder

    root = tmp_path_factory.mktemp("study")
    folder = make_folder(root / "photos")
    queries, corpus, qrels = [], [], {}
    for name, caps in PHOTOS.items():
        corpus.append(Item(name, None, Image.open(folder / f"{name}.png").convert("RGB")))
        for j, cap in enumerate(caps):
            queries.append(Item(f"{name}#{j}", cap))
            qrels[f"{name}#{j}"] = {name}
    t2i = write_task_folder(root / "mbeir_photos_task0", queries, corpus, qrels)
    i2t = write_task_folder(
        root / "mbeir_photos_task3",
        corpus,
        queries,
        {c.id: {q.id for q in queries if q.id.startswith(c.id)} for c in corpus},
    )
    return {
        "root": root,
        "photos": folder,
        "tasks": [t2i, i2t],
        "models": [f"qwen={tiny_models('qwen2_vl')}", f"clip={tiny_models('clip')}"],
    }


def _study(inputs, out, *extra) -> int:
    return main(["study", "--out", str(out), "--models", ",".join(inputs["models"]), "--data",
                 str(inputs["photos"]), "--mbeir", ",".join(map(str, inputs["tasks"])), "--epochs", "5",
                 "--k", "8", "--width-factor", "4", "--no-progress", *extra])  # fmt: skip


def test_study_writes_a_run_folder_results_and_a_report(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    assert _study(inputs, out) == 0
    printed = capsys.readouterr().out
    assert "Recall@k (%, mean over tasks)" in printed and "saeprobe explore" in printed
    results = json.loads((out / "results.json").read_text())
    check_results(results)
    assert set(results["models"]) == {"qwen", "clip"}
    for m in results["models"].values():
        assert set(m["retrieval"]) == {"mbeir_photos_task0", "mbeir_photos_task3"}
        for t in m["retrieval"].values():
            assert {"base", "realign", "ablated"} <= set(t["scores"])
        share = m["analysis"]["energy_share"]
        assert abs(sum(share[t] for t in TAGS) - 1) < 1e-6  # ("bridge" overlaps the tags)
    sweep = results["sweeps"]["qwen"]
    assert sweep["task"] == "mbeir_photos_task0" and len(sweep["alpha"]["x"]) == len(
        sweep["alpha"]["recall"]["1"]
    )
    assert sweep["layers"]["x"][-1] == "final_norm" and len(sweep["layers"]["x"]) >= 2
    assert "layers" not in results["sweeps"]["clip"]  # dual encoders: no per-layer sweep
    assert set(results["findings"]) == {"a", "b", "c"}
    run = RunFolder(out)
    assert run.models == ["qwen", "clip"]
    task = run.task("qwen", "mbeir_photos_task0")
    assert task.queries.shape[0] == 12 and task.task_type == 1 and task.relevant[0] == {0}
    # each stored row is its own item's embedding (inputs are embedded sorted by length, then
    # put back in task order): the paper's mean-pooled final_norm of the item alone
    from saeprobe.capture import capture
    from saeprobe.data.mbeir import open_mbeir
    from saeprobe.models import load_model

    adapter = load_model(inputs["models"][0].split("=", 1)[1])
    queries = list(open_mbeir(inputs["tasks"][0]).queries)
    for i in (0, 5, 11):
        alone = capture(adapter, [queries[i]], ["final_norm"], tokens=False, progress=False)
        ref = torch.nn.functional.normalize(alone.pooled["final_norm"]["mean"].float(), dim=1)[0]
        assert torch.allclose(task.queries[i], ref, atol=1e-5), i
    assert run.items("mbeir_photos_task0-corpus").get("chelsea")["thumb"].is_file()
    assert (out / "report.html").read_text().count("<table>") >= 2
    assert (run.analysis_path("qwen") / "report.html").is_file()
    # a second run keeps every finished stage (no retraining) and gives the same numbers
    sae = (out / "models" / "qwen" / "sae" / "sae_weights.safetensors").stat().st_mtime_ns
    assert _study(inputs, out) == 0
    again = json.loads((out / "results.json").read_text())
    assert (out / "models" / "qwen" / "sae" / "sae_weights.safetensors").stat().st_mtime_ns == sae
    assert again["models"]["qwen"]["retrieval"] == results["models"]["qwen"]["retrieval"]


def test_study_bad_arguments_fail_before_any_model_loads(inputs, tmp_path, capsys):
    assert main(["study", "--out", str(tmp_path / "r"), "--data", str(inputs["photos"])]) == 2
    assert "no --model given" in capsys.readouterr().err
    code = _study(inputs, tmp_path / "r", "--alphas", "0.1,2")
    assert code == 2 and "ReAlign alpha must lie in [0, 1], got 2.0" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
