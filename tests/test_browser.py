"""`minnow serve` in a subprocess, driven in headless Chromium: a prompt in, every variant's answer and timings out;
the benchmark button, a table row per variant and the plots out.

The tiny run by default; ``MINNOW_DEMO_RUN=runs/<run>`` drives the same tests over a finished real run instead (e.g.
the smollm2-135m-offline recipe, for screenshots of real answers in test-artifacts/).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from minnow.export.variants import compare_variants, open_runs, slugify

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
]
ARTIFACTS = Path(__file__).parent.parent / "test-artifacts"
PROMPT = "My laptop will not charge. What should I do?"
STARTUP_SECONDS = 180
ANSWER_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"`minnow serve` exited with {server.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except (urllib.error.URLError, ConnectionError):
            time.sleep(1)
    pytest.fail(f"`minnow serve` did not answer within {STARTUP_SECONDS} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def chromium() -> str:
    """Debian's Chromium; a missing one skips the test, or fails it where MINNOW_REQUIRE_BROWSER is set (CI)."""
    path = shutil.which("chromium")
    if path is None:
        message = "needs Chromium on PATH (apt-get install chromium); Playwright drives it, no `playwright install`"
        if os.environ.get("MINNOW_REQUIRE_BROWSER"):
            pytest.fail(message)
        pytest.skip(message)
    return path


@pytest.fixture(scope="module")
def demo_run(request: pytest.FixtureRequest) -> Path:
    """The run the demo serves: ``MINNOW_DEMO_RUN`` when set, else the tiny run."""
    real = os.environ.get("MINNOW_DEMO_RUN")
    return Path(real).resolve() if real else request.getfixturevalue("tiny_run")


@pytest.fixture(scope="module")
def demo_url(demo_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo of ``demo_run``, started with the real command on a free port (one server for the module's tests)."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = os.environ | {"HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "minnow", "serve", str(demo_run), "--port", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_until_up(url, server, log)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture
def page(chromium: str, demo_url: str):
    """A headless Chromium page opened on the demo."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.goto(demo_url)
            yield page
        finally:
            browser.close()


def screenshot(page, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / name), full_page=True)


def test_prompt_streams_an_answer_and_timings_for_every_variant(page, demo_run: Path):
    from playwright.sync_api import expect

    slugs = [v.slug for v in compare_variants(open_runs([demo_run]))]
    for slug in slugs:
        expect(page.locator(f"#out-{slug}").get_by_role("textbox")).to_be_visible()
    page.locator("#prompt").get_by_role("textbox").fill(PROMPT)
    page.get_by_role("button", name="Generate").click()
    # Variants run in order: once the last one has a tokens/s, the others are done.
    expect(page.locator(f"#tps-{slugs[-1]} input")).not_to_have_value("", timeout=ANSWER_MS)
    for slug in slugs:
        expect(page.locator(f"#out-{slug} textarea")).not_to_have_value("")
        assert not page.locator(f"#out-{slug} textarea").input_value().startswith("⚠"), slug
        for metric in ("ttft", "tps", "size"):
            assert float(page.locator(f"#{metric}-{slug} input").input_value()) >= 0, (slug, metric)
    screenshot(page, "demo.png")


def test_benchmark_fills_a_row_per_variant_and_plots(page, demo_run: Path):
    from playwright.sync_api import expect

    labels = [v.label for v in compare_variants(open_runs([demo_run]))]
    page.locator("#threads").get_by_label("1", exact=True).check()
    page.get_by_role("tab", name="Benchmark").click()
    page.get_by_role("button", name="Run benchmark").click()
    rows = page.locator("#benchmark-table").get_by_role("grid").get_by_role("row")
    # Rows are measured in order: once the last one has a throughput, the table is complete.
    expect(rows.nth(len(labels)).get_by_role("gridcell").nth(3)).to_have_text(re.compile(r"\d"), timeout=ANSWER_MS)
    expect(page.locator("#benchmark-plot").get_by_role("img")).to_be_visible()
    for row, label in enumerate(labels, start=1):  # row 0 is the header
        cells = rows.nth(row).get_by_role("gridcell").all_inner_texts()
        assert cells[0] == label
        size_mb, latency_ms, throughput, quality = map(float, cells[1:])
        assert size_mb > 0 and latency_ms > 0 and throughput > 0 and 0 <= quality <= 100, cells
    screenshot(page, "benchmark.png")


def test_cost_tab_shows_each_variant_per_1k_requests_and_the_chart(page, demo_run: Path):
    from playwright.sync_api import expect

    report = json.loads((demo_run / "report.json").read_text())
    serving = report["cost"]["serving"]
    page.get_by_role("tab", name="Cost").click()
    rows = page.locator(f"#cost-{slugify(report['name'])}").get_by_role("grid").get_by_role("row")
    expect(rows.first).to_be_visible()
    for row, (name, figures) in enumerate(serving.items(), start=1):  # row 0 is the header
        cells = rows.nth(row).get_by_role("gridcell").all_inner_texts()
        assert cells[0] == name
        assert float(cells[1]) == pytest.approx(figures["per_1k_requests"]["wh"], rel=1e-3)
        assert cells[6] in ("measured", "estimated")
    expect(page.get_by_text(re.compile(r"Distilling this student cost [\d.e+-]+ Wh"))).to_be_visible()
    expect(page.get_by_role("tabpanel").get_by_role("img").first).to_be_visible()
    screenshot(page, "cost.png")
