"""The analysis report renders every figure in headless Chromium, offline, without console errors."""

from __future__ import annotations

import json

from tests.helpers import browser_test, build_inputs, chromium_page, run_cli


@browser_test
def test_report_renders_every_figure(tmp_path):
    inputs = build_inputs(tmp_path / "in")
    layer = tmp_path / "layer.json"
    layer.write_text(
        json.dumps({"x": [0, 4, 8], "recall": {"1": [0.1, 0.2, 0.3], "5": [0.3, 0.4, 0.6]}})
    )
    alpha = tmp_path / "alpha.json"
    alpha.write_text(
        json.dumps(
            {
                "series": [
                    {"name": "qwen", "x": [0.0, 0.1, 0.5], "recall": {"5": [0.2, 0.5, 0.4]}},
                    {"name": "pali", "x": [0.0, 0.1, 0.5], "recall": {"5": [0.1, 0.3, 0.35]}},
                ],
                "xlabel": "alpha",
            }
        )
    )
    out = tmp_path / "report"
    assert run_cli(inputs, out, "--layer-sweep", str(layer), "--alpha-sweep", str(alpha)) == 0

    errors: list[str] = []
    requests: list[str] = []
    with chromium_page(errors, requests) as (_, page):
        page.goto((out / "report.html").as_uri(), wait_until="load")
        ids = page.eval_on_selector_all(
            "div.figure > div > div[id^=fig-]", "els => els.map(e => e.id)"
        )
        assert len(ids) == 7, ids
        for fid in ids:
            page.wait_for_selector(f"#{fid} .main-svg", state="attached", timeout=15000)
            n = page.eval_on_selector(f"#{fid}", "e => e.querySelectorAll('.main-svg').length")
            assert n >= 1, fid
    assert not errors, errors
    assert all(u.startswith(("file:", "data:")) for u in requests), requests
