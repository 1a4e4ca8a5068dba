"""The Prefect UI in a real browser: after a small training run through the CLI, headless
Chromium (the Debian package `chromium`, driven by Playwright) shows every step's task run on
the flow run's page, the loss-curve picture on its artifact's page, and the keyed artifacts
on the Artifacts page.

Skipped when /usr/bin/chromium or the `playwright` package is missing (Playwright's own
browser download is never used). Screenshots of each page go to the test's tmp dir.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import API_URL, run_python

CHROMIUM = "/usr/bin/chromium"
INSTALL = "install the Debian package: `apt-get install chromium`"
EXPERIMENT = "benches/experiments/resume.py"  # download, dedup, tokenizer, tokenize, train, eval
TRAIN_NAME = "resume"  # the `name` of train_lm and evaluate in that experiment
FLOW_SLUG = "resume-bench"
WAIT_MS = 60_000  # generous: the server shares 2 cores with everything else in CI

try:
    from playwright.sync_api import expect, sync_playwright
except ImportError:  # pragma: no cover - depends on the environment
    sync_playwright = None

pytestmark = [
    pytest.mark.skipif(
        sync_playwright is None,
        reason=f"playwright is not installed (pip install -e '.[dev]'); browser: {INSTALL}",
    ),
    pytest.mark.skipif(
        not os.access(CHROMIUM, os.X_OK), reason=f"no Chromium at {CHROMIUM}: {INSTALL}"
    ),
]


def shot(page, path: Path) -> None:
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")


def loss_curve_artifact_id(flow_run_id: str) -> str:
    """The loss-curve markdown artifact of the flow run, found through the API (keyed or not)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterId,
    )

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[uuid.UUID(flow_run_id)])),
            artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["markdown"])),
        )
    pictures = [a for a in artifacts if "data:image/png;base64," in str(a.data)]
    assert len(pictures) == 1, [(a.key, a.description) for a in artifacts]
    return str(pictures[0].id)


def test_the_ui_shows_the_runs_steps_loss_curve_and_keyed_artifacts(tmp_path):
    with sync_playwright() as playwright:
        # Launched first: a browser that cannot start fails the test before the training run.
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            headless=True,
            args=["--no-sandbox", "--disable-dev-shm-usage"],
        )
        page = browser.new_page(viewport={"width": 1400, "height": 1700})  # all 6 task runs
        page.set_default_timeout(WAIT_MS)
        try:
            start = time.monotonic()
            run = run_python(
                ["-m", "flows", "run", EXPERIMENT, "--prefix", str(tmp_path / "out")],
                env={"LMFLOWS_BENCH_TRAIN_STEPS": "10", "PREFECT_LOGGING_LEVEL": "INFO"},
                timeout=600,
            )
            output = run.stdout + run.stderr
            assert run.returncode == 0, output[-4000:]
            trained = time.monotonic()
            print(f"training run: {trained - start:.1f} s")
            finished = re.findall(r"Task run '([^']+)' - Finished in state (\w+)\(", output)
            assert [state for _, state in finished] == ["Completed"] * 6, finished
            steps = sorted(name for name, _ in finished)
            [(ui, flow_run_id)] = re.findall(
                r"lmflows: flow run (\S+)/runs/flow-run/([0-9a-f-]{36})", output
            )
            assert ui == API_URL.removesuffix("/api")
            browse(page, ui, flow_run_id, steps, tmp_path)
            print(f"browser checks: {time.monotonic() - trained:.1f} s")
        except BaseException:
            with contextlib.suppress(Exception):
                shot(page, tmp_path / "failure.png")
            raise
        finally:
            browser.close()


def browse(page, ui: str, flow_run_id: str, steps: list[str], tmp_path: Path) -> None:
    # 1. The flow run's page: its "Task Runs" tab lists one task run per step, each Completed.
    page.goto(f"{ui}/runs/flow-run/{flow_run_id}")
    page.locator("li.p-tab#task-runs").click()
    items = page.locator("#task-runs-content .task-run-list-item")
    expect(items).to_have_count(len(steps), timeout=WAIT_MS)
    names = items.locator(".state-list-item__name a")
    expect(names).to_have_count(len(steps), timeout=WAIT_MS)
    assert sorted(names.all_inner_texts()) == steps
    expect(items.locator(".state-badge")).to_have_text(["Completed"] * len(steps))
    shot(page, tmp_path / "flow-run.png")

    # 2. The loss curve's artifact page: the picture in its markdown is loaded and drawn.
    page.goto(f"{ui}/artifacts/artifact/{loss_curve_artifact_id(flow_run_id)}")
    image = page.locator("article.artifact-data-markdown img")
    expect(image).to_have_count(1, timeout=WAIT_MS)
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    loaded = "img => img.complete && img.naturalWidth > 0"
    page.wait_for_function(loaded, arg=image.element_handle())
    width, height = image.evaluate("img => [img.naturalWidth, img.naturalHeight]")
    assert width > 100 and height > 100, (width, height)
    shot(page, tmp_path / "loss-curve.png")

    # 3. The Artifacts page lists the keyed artifacts (searched, so that other tests' keys on
    # the shared server cannot push them out of the rendered list).
    page.goto(f"{ui}/artifacts")
    page.get_by_placeholder("Search artifacts").fill(TRAIN_NAME)
    for kind in ("loss-curve", "metrics", "eval", "progress"):
        card = page.locator(f"a[href$='/artifacts/key/{kind}-{TRAIN_NAME}']")
        expect(card).to_contain_text(f"{kind}-{TRAIN_NAME}", timeout=WAIT_MS)
    steps_card = page.locator(f"a[href$='/artifacts/key/steps-{FLOW_SLUG}']")
    expect(steps_card).to_contain_text(f"steps-{FLOW_SLUG}", timeout=WAIT_MS)
    shot(page, tmp_path / "artifacts.png")
