"""The explorer page (headless Debian Chromium, no console errors, nothing fetched from
elsewhere): ticking a planted distractor's checkbox changes the displayed Recall@1; on a run
folder, a scatter click opens a card with images, the top-5 distractors give the library's
Recall, the alpha slider recomputes, the URL restores the view, export downloads JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.helpers import browser_test, chromium_page, serving, watch_console


@browser_test
@pytest.mark.timeout(60)
def test_ticking_a_distractor_changes_recall():
    from saeprobe.explorer import ExplorerSession, planted_retrieval

    ps = planted_retrieval(n_pairs=32, seed=1)
    session = ExplorerSession(ps.sae, ps.data)
    expected_before = session.baseline["R@1"]
    expected_after = session.evaluate([ps.distractors[0]]).metrics["R@1"]
    assert expected_after > expected_before  # the planted distractor hurts retrieval
    expected_white = session.evaluate([ps.distractors[0]], whiten="realign", alpha=0.1).metrics[
        "R@1"
    ]
    errors: list[str] = []
    requests: list[str] = []
    with serving(session) as url, chromium_page(errors, requests) as (_, page):
        page.goto(url, wait_until="load")
        page.wait_for_selector("body[data-eval-done]", timeout=15000)
        rows = page.locator("#features tbody tr")
        assert rows.count() >= 4
        # the list is sorted by attribution: the planted distractors come first
        first_ids = page.eval_on_selector_all(
            "#features input.ablate",
            "els => els.slice(0, 2).map(e => Number(e.dataset.id))",
        )
        assert sorted(first_ids) == sorted(ps.distractors)
        before = page.inner_text("#after-R1")
        assert float(before) == pytest.approx(expected_before, abs=1e-3)
        assert page.inner_text("#before-R1") == before
        done = page.get_attribute("body", "data-eval-done")
        page.check(f"#features input.ablate[data-id='{ps.distractors[0]}']")
        page.wait_for_selector(f"body:not([data-eval-done='{done}'])", timeout=15000)
        after = page.inner_text("#after-R1")
        assert float(after) == pytest.approx(expected_after, abs=1e-3)
        assert after != before
        assert page.inner_text("#n-ablated") == "1"
        # the per-query view follows the setting
        page.wait_for_selector("#top-after li:nth-child(5)")
        assert page.locator("#top-after li").count() == 5
        # switching ReAlign on recomputes with whitening
        done = page.get_attribute("body", "data-eval-done")
        page.select_option("#whiten", "realign")
        page.wait_for_selector(f"body:not([data-eval-done='{done}'])", timeout=15000)
        assert not page.is_disabled("#alpha")
        assert float(page.inner_text("#after-R1")) == pytest.approx(expected_white, abs=1e-3)
        # the sweep chart was drawn with plotly (served locally)
        page.wait_for_selector("#sweep .main-svg", state="attached", timeout=15000)
    assert not errors, errors
    assert all(u.startswith(url) for u in requests), requests


# ------------------------------------------------------------------ run folders
SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "images" / "explorer.png"


@pytest.fixture(scope="session")
def run_dir(demo_quick_run):
    """The `saeprobe demo --quick` run folder: the demo LLaVA and CLIP on the scenes tasks."""
    return demo_quick_run


def wait_until(page, fn: str, timeout: float = 15.0) -> None:
    """Poll a JS predicate with ``page.evaluate`` (the page's CSP forbids the string eval of
    ``wait_for_function``)."""
    import time

    t0 = time.monotonic()
    while not page.evaluate(fn):
        assert time.monotonic() - t0 < timeout, f"timed out waiting for {fn}"
        page.wait_for_timeout(50)


def _point_of(page, concept: int):
    """The SVG marker of ``concept`` in the scatter (trace and point index from plotly's data)."""
    k, j = page.evaluate(
        """(id) => { const data = document.getElementById('scatter').data;
             for (let k = 0; k < data.length - 1; k++) {
               const j = (data[k].customdata || []).indexOf(id);
               if (j >= 0) return [k, j]; }
             return [-1, -1]; }""",
        concept,
    )
    assert k >= 0, f"concept {concept} is not in the scatter"
    return page.locator("#scatter .scatterlayer .trace").nth(k).locator(".points path").nth(j)


@browser_test
@pytest.mark.timeout(120)
def test_run_folder_page(run_dir, tmp_path):
    from saeprobe.explorer import RunExplorer

    app = RunExplorer(run_dir)
    app.prepare()
    model = app.run.models[0]  # what the page opens on: the first model and its first task
    task = app.run.tasks(model)[0]
    session = app.session(model, task)
    top5 = session.top_distractors(5)
    want = session.evaluate(top5).metrics
    want_white = session.evaluate(top5, whiten="realign", alpha=0.3).metrics
    # (visual, if any) concepts that fire on image tokens: their cards show heatmaps
    sc = app.scatter()
    order = sorted(range(len(sc["id"])), key=lambda j: (sc["tag"][j] != "visual", -sc["y"][j]))
    with_images = (
        sc["id"][j]
        for j in order
        if any(
            it["image"] and max(it["image"]["values"]) > 0
            for it in app.card(concept=sc["id"][j])["items"]
        )
    )
    errors: list[str] = []
    requests: list[str] = []
    with (
        serving(app) as url,
        chromium_page(errors, requests, viewport={"width": 1360, "height": 1180}) as (
            browser,
            page,
        ),
    ):
        page.goto(url, wait_until="load")
        page.wait_for_selector("body[data-eval-done]", timeout=20000)
        page.wait_for_selector("body[data-scatter-done]", timeout=20000)
        # the run's models and tasks: menus
        assert page.locator("#model option").count() == len(app.run.models) >= 2
        assert page.locator("#task option").count() == len(app.run.tasks(model)) >= 2
        # click a scatter point (one no other point covers): its card opens with images and
        # heatmaps
        centres = page.evaluate(
            """() => [...document.querySelectorAll('#scatter .scatterlayer .trace .points path')]
                 .map(p => { const r = p.getBoundingClientRect();
                             return [r.x + r.width / 2, r.y + r.height / 2]; })"""
        )
        for concept in with_images:  # plotly clicks the nearest point: pick an isolated one
            box = _point_of(page, concept).bounding_box()
            x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
            near = sum((cx - x) ** 2 + (cy - y) ** 2 < 8**2 for cx, cy in centres)
            if near == 1:  # only itself within 8 px
                break
        else:
            pytest.fail("no image-firing concept has an isolated point in the scatter")
        page.mouse.move(x, y)
        page.mouse.click(x, y)
        page.wait_for_selector(f"body[data-card-done='{concept}']", timeout=15000)
        assert page.inner_text("#card h3").startswith(f"Concept {concept}")
        assert page.locator("#card .top-item img").count() >= 1
        assert page.locator("#card .heat .cell").count() >= 4
        wait_until(
            page,
            "() => [...document.querySelectorAll('#card img')].every(i => i.complete && i.naturalWidth > 0)",
        )
        assert "card=" in page.url
        # tick the top 5 distractors: the shown Recall is the library's
        done = page.get_attribute("body", "data-eval-done")
        page.fill("#top-n", "5")
        page.click("#tick-top")
        page.wait_for_selector(f"body:not([data-eval-done='{done}'])", timeout=15000)
        assert float(page.inner_text("#after-R1")) == pytest.approx(want["R@1"], abs=1e-3)
        assert float(page.inner_text("#after-MRR")) == pytest.approx(want["MRR"], abs=1e-3)
        assert page.inner_text("#n-ablated") == "5"
        checked = page.eval_on_selector_all(
            "#features input.ablate:checked", "els => els.map(e => Number(e.dataset.id))"
        )
        assert sorted(checked) == sorted(top5)
        # the per-query view shows thumbnails, the relevant candidate marked: go to a query
        # whose relevant candidate is in a top 5 (not every one is: text -> image is where
        # the generative model is weak)
        qi = next(
            i
            for i in range(session.data.n_queries)
            if any(
                v["rank"] and v["rank"] <= 5
                for v in (lambda q: (q["before"], q["after"]))(session.query(i, top5))
            )
        )
        page.fill("#query-index", str(qi))
        page.dispatch_event("#query-index", "change")
        wait_until(page, f"() => document.getElementById('query-index').value === '{qi}'")
        page.wait_for_selector("#top-after li.relevant, #top-before li.relevant", timeout=15000)
        page.wait_for_selector("#top-after li:nth-child(5) img")
        assert page.locator("#top-after li img").count() == 5
        assert page.locator("#top-after li.relevant, #top-before li.relevant").count() >= 1
        # ReAlign on, then move the alpha slider: recomputed live
        done = page.get_attribute("body", "data-eval-done")
        page.select_option("#whiten", "realign")
        page.wait_for_selector(f"body:not([data-eval-done='{done}'])", timeout=15000)
        done = page.get_attribute("body", "data-eval-done")
        page.locator("#alpha").fill("0.3")
        page.wait_for_selector(f"body:not([data-eval-done='{done}'])", timeout=15000)
        wait_until(page, "() => document.getElementById('status').textContent.includes('ablated')")
        assert page.inner_text("#alpha-value") == "0.30"
        assert float(page.inner_text("#after-R1")) == pytest.approx(want_white["R@1"], abs=1e-3)
        assert "alpha=0.3" in page.url and "whiten=realign" in page.url
        # the URL is the view: reloading it restores the setting and the card
        shared = page.url
        page2 = browser.new_page(viewport={"width": 1360, "height": 1500})
        watch_console(page2, errors)
        page2.goto(shared, wait_until="load")
        page2.wait_for_selector(f"body[data-card-done='{concept}']", timeout=20000)
        page2.wait_for_selector("body[data-eval-done]", timeout=20000)
        assert page2.inner_text("#after-R1") == page.inner_text("#after-R1")
        assert page2.input_value("#alpha") == "0.3"
        # export downloads the selection and its metrics
        with page.expect_download() as dl:
            page.click("#export")
        exported = json.loads(Path(dl.value.path()).read_text())
        assert exported["setting"]["ablate"] == sorted(top5)
        assert exported["metrics"]["R@1"] == pytest.approx(want_white["R@1"])
        page.wait_for_timeout(300)
        shot = page.screenshot(full_page=False)
        (tmp_path / "explorer.png").write_bytes(shot)
        if os.environ.get("SAEPROBE_UPDATE_SCREENSHOTS") == "1":
            from saeprobe.atomic import atomic_write_bytes

            atomic_write_bytes(SCREENSHOT, shot, what="screenshot")
    assert not errors, errors
    assert all(u.startswith(url) or u.startswith("blob:") for u in requests), requests
