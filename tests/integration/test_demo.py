"""`saeprobe demo` runs every stage end to end on a tiny offline model."""

from __future__ import annotations

import csv
import json

import pytest

from saeprobe.cli import main

pytestmark = pytest.mark.integration


def test_demo_writes_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "40"]) == 0
    printed = capsys.readouterr().out
    for stage in ("[1/5]", "[2/5]", "[3/5]", "[4/5]", "[5/5]", "demo finished"):
        assert stage in printed
    manifest = json.loads((out / "store" / "manifest.json").read_text())
    assert manifest["n_tokens"] > 0 and manifest["finished"]
    assert (out / "sae" / "cfg.json").exists()
    html = (out / "report" / "report.html").read_text()
    assert "plotly" in html.lower()
    with open(out / "report" / "features.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 8 * manifest["d"]  # the demo's SAE width
    assert {"feature", "modality_score", "tag", "bridge_score", "attribution"} <= set(rows[0])
    res = json.loads((out / "retrieval.json").read_text())
    assert set(res["results"]) == {"base", "realign", "zca"}
    assert res["n_queries"] == 12 and res["n_corpus"] == 6
    for scores in res["results"].values():
        assert 0.0 <= scores["R@1"] <= scores["R@5"] <= scores["R@10"] == 1.0
