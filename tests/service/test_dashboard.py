"""The dashboard (routes/dashboard.py, service/static/): its pages and assets over HTTP,
and the live page in a real headless browser (Debian's chromium driven by Playwright)
while a background thread learns samples. The browser test saves a screenshot under
test-artifacts/."""

from __future__ import annotations

import contextlib
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from service.config import Settings
from tests.service.conftest import create, spec
from tests.service.servers import REPO, ThreadServer
from tests.service.sse import BackgroundLearner, blob_sample

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
]  # fmt: skip
ARTIFACTS = REPO / "test-artifacts"
WRITER, READER = "writer-key-123", "reader-key-456"
DEMO = spec(
    "demo",
    input_shape=[8],
    network={"kind": "mlp", "hidden": [32, 16]},
    norm={"kind": "online", "alpha_fwd": 0.99, "alpha_bkw": 0.9, "ecm": "ls"},
)


def test_pages_and_assets_are_served(client: httpx.Client) -> None:
    for path in ("/dashboard", "/dashboard/m", "/dashboard/any-model_1.0"):
        r = client.get(path)
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/html"), path
        assert "script-src" not in r.headers["content-security-policy"]  # default-src 'self' covers it
        assert "default-src 'self'" in r.headers["content-security-policy"]
        assert r.headers["referrer-policy"] == "no-referrer"
    assert "picker.js" in client.get("/dashboard").text
    page = client.get("/dashboard/m").text
    assert "uPlot.iife.min.js" in page and "model.js" in page and "cdn" not in page.lower()
    assert client.get("/dashboard/bad%20name").status_code == 404
    for asset, kind in [
        ("vendor/uplot/uPlot.iife.min.js", "javascript"),
        ("vendor/uplot/uPlot.min.css", "text/css"),
        ("vendor/uplot/LICENSE", ""),
        ("model.js", "javascript"),
        ("dashboard.css", "text/css"),
    ]:
        r = client.get(f"/dashboard/static/{asset}")
        assert r.status_code == 200 and kind in r.headers["content-type"], asset
    assert "MIT License" in client.get("/dashboard/static/vendor/uplot/LICENSE").text
    assert client.get("/dashboard/static/nope.js").status_code == 404
    paths = client.get("/openapi.json").json()["paths"]
    assert "/v1/models/{name}/stats/history" in paths and "/v1/models/{name}/stats/stream" in paths
    assert not [p for p in paths if p.startswith("/dashboard")]


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Debian chromium under Playwright; skips where either is missing."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is not installed (apt-get install chromium; .ci/run does)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:
        pytest.skip(f"playwright cannot be imported ({exc}); pip install -e '.[dev]'")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class PageErrors:
    """Console errors and uncaught exceptions of a page (CSP violations land here too)."""

    def __init__(self, page: Any) -> None:
        self.messages: list[str] = []
        page.on("console", lambda m: m.type == "error" and self.messages.append(m.text))
        page.on("pageerror", lambda e: self.messages.append(str(e)))
        page.on("response", lambda r: r.status >= 400 and self.messages.append(f"{r.status} {r.url}"))


def chart_lengths(page: Any) -> dict[str, int]:
    return page.evaluate(
        "() => Object.fromEntries(Object.entries(window.onlinenormDashboard.charts)"
        ".map(([id, plot]) => [id, plot.data[0].length]))"
    )


@pytest.mark.timeout(120)
def test_dashboard_charts_update_live_in_a_browser(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(
        API_KEYS=[WRITER], READONLY_API_KEYS=[READER], STATS_EVERY_STEPS=10, STATS_EVERY_SECONDS=0.5
    )
    with ThreadServer(settings) as srv, chromium() as browser:
        auth = {"Authorization": f"Bearer {WRITER}"}
        with srv.client(headers=auth) as c:
            info = create(c, DEMO)
            rng = random.Random(1)
            for _ in range(30):  # some history before the page opens: one publish per batch
                batch = [blob_sample(rng, size=8) for _ in range(10)]
                assert c.post("/v1/models/demo/learn/batch", json={"samples": batch}).status_code == 200
        with BackgroundLearner(srv.url, "demo", headers=auth, pause=0.01, size=8) as learner:
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(20_000)
            errors = PageErrors(page)
            # The picker, opened with ?key=: the key moves to sessionStorage, out of the URL.
            page.goto(f"{srv.url}/dashboard?key={READER}")
            page.wait_for_selector("a[href='/dashboard/demo']")
            assert "key=" not in page.url
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard-models.png"))
            page.click("a[href='/dashboard/demo']")
            page.wait_for_function("() => window.onlinenormDashboard?.status === 'live'")
            first = chart_lengths(page)
            expected = {"loss", "accuracy"} | {
                f"{layer}/{kind}" for layer in info["layers"] for kind in ("mu", "std", "ecm")
            }
            expected.discard("input_norm/ecm")  # the input standardizer's u and v stay 0: no chart
            assert set(first) == expected
            assert min(first.values()) >= 25  # the initial points, from the history endpoint
            page.wait_for_function(
                "(first) => Object.entries(window.onlinenormDashboard.charts)"
                ".every(([id, plot]) => plot.data[0].length >= first[id] + 3)",
                arg=first,
            )
            state = page.evaluate(
                "() => ({events: window.onlinenormDashboard.events,"
                " fetches: window.onlinenormDashboard.statsFetches})"
            )
            assert state["events"] >= 3 and state["fetches"] >= 1
            strips = page.eval_on_selector_all(".strip canvas", "cs => cs.map(c => c.width)")
            assert len(strips) == 2 * len(info["layers"]) and min(strips) > 0
            assert int(page.inner_text("#step")) > 300
            page.wait_for_timeout(1500)  # a few more points, for a fuller picture
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
            page.close()  # closes its event stream before the server stops
            # A fresh tab without the key asks for it, then goes live with it.
            page = browser.new_page(viewport={"width": 1440, "height": 900})
            page.set_default_timeout(20_000)
            errors_without_key = PageErrors(page)
            page.goto(f"{srv.url}/dashboard/demo")
            page.fill(".key-form input", READER)
            page.click(".key-form button")
            page.wait_for_function("() => window.onlinenormDashboard?.status === 'live'")
            page.close()
        assert not learner.errors
    assert errors.messages == []
    assert errors_without_key.messages  # the 401 that made it ask
    assert [m for m in errors_without_key.messages if "401" not in m] == []


def _learned(c: httpx.Client, name: str, batches: int) -> None:
    rng = random.Random(2)
    for _ in range(batches):  # one stats publish per batch
        batch = [blob_sample(rng, size=8) for _ in range(10)]
        assert c.post(f"/v1/models/{name}/learn/batch", json={"samples": batch}).status_code == 200


@pytest.mark.timeout(180)
def test_dashboard_says_what_it_shows(make_settings: Callable[..., Settings], tmp_path: Path) -> None:
    """Unknown and empty models are named as such; the rate falls to 0 when the model is
    idle; step ticks never repeat; the input standardizer gets no flat chart; ?static=1
    renders once without a stream, so that ``chromium --screenshot`` returns."""
    settings = make_settings(
        API_KEYS=[WRITER], READONLY_API_KEYS=[READER], STATS_EVERY_STEPS=10, STATS_EVERY_SECONDS=0.5
    )
    auth = {"Authorization": f"Bearer {WRITER}"}
    with ThreadServer(settings) as srv, chromium() as browser:
        with srv.client(headers=auth) as c:
            create(c, DEMO)
            create(c, {**DEMO, "name": "empty"})
            _learned(c, "demo", 12)
        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(20_000)
        page.goto(f"{srv.url}/dashboard/nobody?key={READER}")
        page.wait_for_function("() => window.onlinenormDashboard?.status === 'not found'")
        assert page.inner_text("#live") == "not found"
        assert "No model named “nobody” exists" in page.inner_text("#notice")
        assert not page.is_visible("#performance") and not page.is_visible("#layers")
        page.close()

        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.set_default_timeout(20_000)
        errors = PageErrors(page)
        page.goto(f"{srv.url}/dashboard/empty?key={READER}")
        page.wait_for_function("() => window.onlinenormDashboard?.status === 'live'")
        assert page.inner_text("#live") == "no samples yet"
        assert page.is_visible("#empty") and "No samples yet" in page.inner_text("#empty")
        with srv.client(headers=auth) as c:
            _learned(c, "empty", 1)
        page.wait_for_function("() => document.querySelector('#live').textContent === 'live'")
        assert not page.is_visible("#empty")

        page.goto(f"{srv.url}/dashboard/demo")
        page.wait_for_function("() => window.onlinenormDashboard?.status === 'live'")
        charts = page.evaluate("() => Object.keys(window.onlinenormDashboard.charts)")
        assert "input_norm/ecm" not in charts and "blocks.0.1/ecm" in charts
        assert "u and v stay 0" in page.inner_text("#layers")
        labels = page.evaluate(
            "async () => (await import('/dashboard/static/charts.js')).stepLabels([1100, 1120, 1140, 1160])"
        )
        assert len(set(labels)) == 4, labels
        with BackgroundLearner(srv.url, "demo", headers=auth, pause=0.01, size=8):
            page.wait_for_function("() => Number(document.querySelector('#rate').textContent) > 0")
        started = time.monotonic()
        page.wait_for_function("() => document.querySelector('#rate').textContent === '0'", timeout=30_000)
        assert time.monotonic() - started < 20
        page.close()
        assert errors.messages == []

        shot = tmp_path / "static.png"
        args = [str(CHROMIUM), "--headless", *CHROMIUM_ARGS, "--window-size=1440,900",
                f"--screenshot={shot}", f"{srv.url}/dashboard/demo?static=1&key={READER}"]  # fmt: skip
        done = subprocess.run(args, capture_output=True, text=True, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:]
        assert shot.stat().st_size > 10_000
        ARTIFACTS.mkdir(exist_ok=True)
        (ARTIFACTS / "dashboard-static.png").write_bytes(shot.read_bytes())

        page = browser.new_page(viewport={"width": 1440, "height": 900})
        page.goto(f"{srv.url}/dashboard/demo?static=1&key={READER}")
        page.wait_for_function("() => window.onlinenormDashboard?.status === 'static'")
        page.wait_for_timeout(1500)
        state = page.evaluate("() => ({events: window.onlinenormDashboard.events, "
                              "history: window.onlinenormDashboard.historyEntries})")  # fmt: skip
        assert state["events"] == 0 and state["history"] >= 10
        assert page.inner_text("#live") == "snapshot"
        page.close()
