"""`saeprobe analyze` on a store written with the real store writer and an SAE saved with the
real `sae.save`; bad inputs give clear errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from analysis import FEATURE_COLUMNS, AnalysisConfig, save_pairs, stats_from_store
from saeprobe.sae import SAEConfig, TopKSAE
from saeprobe.store import ActivationStore
from tests.helpers import (
    D_MODEL,
    HARMFUL,
    SEMANTIC,
    SYS,
    SYSTEM_C,
    TEMPLATE_C,
    TEXTUAL,
    VISUAL,
    C,
    P,
    build_inputs,
    run_cli,
)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return build_inputs(tmp_path_factory.mktemp("analysis_cli"))


def test_analyze_cli_writes_report_and_tables(inputs, tmp_path, capsys):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq
    from PIL import Image

    lines = []
    for sid in range(2 * P):
        if sid % 2 == 0:
            Image.new("RGB", (40, 30), (0, 0, 200)).save(tmp_path / f"img{sid}.png")
            lines.append(json.dumps({"id": f"img-{sid}", "image": f"img{sid}.png"}))
        else:
            lines.append(json.dumps({"id": f"cap-{sid}", "text": f"caption number {sid}"}))
    (tmp_path / "items.jsonl").write_text("\n".join(lines))
    out = tmp_path / "report"
    assert run_cli(inputs, out, "--data", str(tmp_path / "items.jsonl")) == 0
    printed = capsys.readouterr().out
    assert "textual" in printed and "report:" in printed
    table = pq.read_table(out / "features.parquet").to_pydict()
    assert tuple(table) == FEATURE_COLUMNS  # one table of columns: analysis.FEATURE_COLUMNS
    assert "is_bridge" in FEATURE_COLUMNS and "energy_text" in FEATURE_COLUMNS
    assert table["feature"] == list(range(C))
    assert pacsv.read_csv(out / "features.csv").num_rows == C
    # energy against a dense float64 reference over the store's non-system tokens
    batch = ActivationStore(inputs["store"]).read_all()
    keep = batch.modality.long() != SYS
    with torch.no_grad():
        z = inputs["sae_obj"].encode(batch.acts[keep].float()).double()
    assert torch.allclose(torch.tensor(table["energy"], dtype=torch.float64), z.mean(0), atol=1e-5)
    assert sum(table["energy_share"]) == pytest.approx(1.0)
    tags = table["tag"]
    for c in TEXTUAL:
        assert tags[c] == "textual"
    for c in VISUAL:
        assert tags[c] == "visual"
    assert tags[TEMPLATE_C] == "bimodal" and tags[SYSTEM_C] == "dead"
    assert all(tags[c] == "bimodal" for c in SEMANTIC)
    assert [f for f, d in zip(table["feature"], table["is_distractor"]) if d] == sorted(HARMFUL)
    assert all(not math.isnan(v) for v in table["attribution"])
    html = (out / "report.html").read_text()
    assert "<script src=" not in html and 'src="http' not in html and "src='http" not in html
    assert "Plotly" in html and len(html) > 1_000_000  # plotly.js is inline
    for fid in (
        "energy-vs-modality",
        "energy-share",
        "bridge-heatmap",
        "attribution",
        "ablation-sweep",
    ):
        assert f'id="fig-{fid}"' in html
    assert "card-" in html and (out / "summary.json").exists()
    # feature cards show the items behind the top sample ids
    assert "data:image/png;base64," in html and "caption number" in html
    summary = json.loads((out / "summary.json").read_text())["summary"]
    assert summary["textual_energy_share"] == pytest.approx(
        sum(e for e, t in zip(table["energy_share"], tags) if t == "textual")
    )


def test_token_level_stats_and_limits(inputs):
    store = ActivationStore(inputs["store"])
    sae = inputs["sae_obj"]
    st = stats_from_store(
        sae, store, AnalysisConfig(modality_level="token", top_m=2), progress=False
    )
    # template tokens are neither TEXT nor IMAGE tokens: no modality score at the token level
    assert math.isnan(float(st.modality_score[TEMPLATE_C]))
    assert float(st.modality_score[TEXTUAL[0]]) == pytest.approx(1.0)
    # top inputs of a semantic concept are its pair's two samples
    assert {s for s, _ in st.top_inputs[SEMANTIC[3]]} == {6, 7}
    part = stats_from_store(sae, store, AnalysisConfig(max_tokens=20, top_m=0), progress=False)
    assert sum(part.n_rows.values()) == 20


def test_analyze_cli_bad_inputs(inputs, tmp_path, capsys):
    # an SAE whose d differs from the activations
    other = TopKSAE(SAEConfig(arch="topk", d_in=D_MODEL + 1, d_sae=8, k=2))
    other.save(tmp_path / "sae_other")
    bad = dict(inputs, sae=tmp_path / "sae_other")
    assert run_cli(bad, tmp_path / "o1") == 2
    assert "expects d_in=49" in capsys.readouterr().err
    # pairs whose ids do not match
    img = torch.randn(3, D_MODEL)
    save_pairs(tmp_path / "bad.safetensors", img, img, image_ids=[0, 1, 2], text_ids=[0, 2, 1])
    assert run_cli(dict(inputs, pairs=tmp_path / "bad.safetensors"), tmp_path / "o2") == 2
    assert "ids do not match: row 1" in capsys.readouterr().err
    # a malformed sweep file
    (tmp_path / "sweep.json").write_text('{"x": [1, 2]}')
    assert run_cli(inputs, tmp_path / "o3", "--layer-sweep", str(tmp_path / "sweep.json")) == 2
    assert "recall" in capsys.readouterr().err


def test_analyze_store_api_with_objects_and_pairs_only(inputs, tmp_path):
    import pyarrow.parquet as pq

    from analysis import AnalysisConfig, analyze_store, load_pairs

    # objects instead of paths, statistics from the pooled pairs only (no store)
    cfg = AnalysisConfig(n_distractors=2, ablation_steps=[0, 2], ks=(1,))
    files = analyze_store(
        inputs["sae_obj"], None, tmp_path / "r", pairs=load_pairs(inputs["pairs"]), cfg=cfg
    )
    assert (
        files.html.exists()
        and files.table.exists()
        and files.csv.exists()
        and files.summary.exists()
    )
    res = files.result
    assert res.stats.n_rows == {"template": 0, "text": P, "image": P, "system": 0}
    assert sorted(res.distractors) == sorted(HARMFUL)
    assert res.sweep.recall[1][-1] > res.sweep.recall[1][0]
    table = pq.read_table(files.table).to_pydict()
    assert [table["tag"][c] for c in HARMFUL] == ["bimodal", "bimodal"]
    with pytest.raises(ValueError, match="nothing to analyse"):
        analyze_store(inputs["sae_obj"], None, tmp_path / "r2")
