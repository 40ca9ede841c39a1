"""The explorer page renders the feature list offline, and ticking a planted distractor's
checkbox changes the displayed Recall@1 (headless Debian Chromium, no console errors)."""

from __future__ import annotations

import os

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.mark.browser
@pytest.mark.timeout(60)
@pytest.mark.skipif(
    not os.path.exists(CHROMIUM),
    reason=f"Debian chromium not installed at {CHROMIUM} (apt-get install -y chromium)",
)
def test_ticking_a_distractor_changes_recall():
    from playwright.sync_api import sync_playwright

    from saeprobe.explorer import ExplorerSession, planted_retrieval, serve_in_thread

    ps = planted_retrieval(n_pairs=32, seed=1)
    session = ExplorerSession(ps.sae, ps.data)
    expected_before = session.baseline["R@1"]
    expected_after = session.evaluate([ps.distractors[0]]).metrics["R@1"]
    assert expected_after > expected_before  # the planted distractor hurts retrieval
    expected_white = session.evaluate([ps.distractors[0]], whiten="realign", alpha=0.1).metrics[
        "R@1"
    ]
    server, url = serve_in_thread(session)
    errors: list[str] = []
    requests: list[str] = []
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            try:
                page = browser.new_page()
                page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.on("request", lambda r: requests.append(r.url))
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
                page.wait_for_function(
                    f"document.body.dataset.evalDone !== '{done}'", timeout=15000
                )
                after = page.inner_text("#after-R1")
                assert float(after) == pytest.approx(expected_after, abs=1e-3)
                assert after != before
                assert page.inner_text("#n-ablated") == "1"
                # the per-query view follows the setting
                page.wait_for_function("document.querySelectorAll('#top-after li').length === 5")
                # switching ReAlign on recomputes with whitening
                done = page.get_attribute("body", "data-eval-done")
                page.select_option("#whiten", "realign")
                page.wait_for_function(
                    f"document.body.dataset.evalDone !== '{done}'", timeout=15000
                )
                assert not page.is_disabled("#alpha")
                assert float(page.inner_text("#after-R1")) == pytest.approx(
                    expected_white, abs=1e-3
                )
                # the sweep chart was drawn with plotly (served locally)
                page.wait_for_selector("#sweep .main-svg", state="attached", timeout=15000)
            finally:
                browser.close()
    finally:
        server.shutdown()
        server.server_close()
    assert not errors, errors
    assert all(u.startswith(url) for u in requests), requests
