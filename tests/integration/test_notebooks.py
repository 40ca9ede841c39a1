"""The four notebooks: stored without outputs, and executed top to bottom in a real Jupyter
kernel (nbclient) on the `saeprobe demo --quick` run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = [
    "01_quickstart.ipynb",
    "02_modality_breakdown.ipynb",
    "03_interactive_ablation.ipynb",
    "04_train_sae_on_a_new_mllm.ipynb",
]


def test_the_four_notebooks_are_there_without_outputs():
    assert [p.name for p in NOTEBOOKS] == EXPECTED
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        assert nb["nbformat"] == 4 and nb["metadata"]["kernelspec"]["name"] == "python3"
        assert nb["cells"][0]["cell_type"] == "markdown"
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        assert len(code) >= 4, path.name
        for cell in code:  # outputs stripped in git
            assert cell["outputs"] == [] and cell["execution_count"] is None, path.name


def _execute(path: Path, env: dict[str, str], cwd: Path) -> dict:
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the kernel inherits the environment
    try:
        client = nbclient.NotebookClient(
            nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        )
        client.execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return nb


def _stdout(nb) -> str:
    return "".join(
        o.get("text", "")
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if o.get("output_type") == "stream" and o.get("name") == "stdout"
    )


@pytest.mark.parametrize("name", EXPECTED[:3])
def test_demo_notebooks_execute(name, demo_quick_run, tmp_path):
    nb = _execute(
        ROOT / "notebooks" / name,
        {"SAEPROBE_RUN": str(demo_quick_run), "OMP_NUM_THREADS": "1"},
        tmp_path,
    )
    out = _stdout(nb)
    results = json.loads((demo_quick_run / "results.json").read_text())
    models = list(results["models"])
    shown = models[:1] if name.startswith("03") else models  # 03 opens the first model
    assert all(m in out for m in shown)
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if name.startswith("01"):
        assert "Recall@k (%, mean over tasks)" in out and "claim c:" in out
    if name.startswith("02"):
        share = results["models"][models[0]]["analysis"]["energy_share"]["textual"]
        assert f"textual {100 * share:5.1f}%" in out  # recomputed from features.parquet
    if name.startswith("03"):
        assert "baseline:" in out and "alpha 0.10" in out and "before: rank" in out


def test_new_mllm_notebook_executes(tmp_path):
    nb = _execute(ROOT / "notebooks" / EXPECTED[3], {"OMP_NUM_THREADS": "1"}, tmp_path)
    out = _stdout(nb)
    assert "no saeprobe adapter for architecture 'VipLlavaForConditionalGeneration'" in out
    assert "final_norm == hidden_states[-1]" in out and "FVU" in out and "report:" in out
