"""A gs:// prefix against a real GCS emulator process (gcp-storage-emulator)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import fsspec
import pytest
from prefect import flow

from tests.conftest import free_port, run_python
from tests.helpers import steps

BUCKET = "lmflows-test"


@pytest.fixture(scope="module")
def emulator():
    port = free_port()
    exe = Path(sys.executable).with_name("gcp-storage-emulator")
    proc = subprocess.Popen(
        [
            str(exe),
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--default-bucket",
            BUCKET,
            "--in-memory",
            "-q",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/storage/v1/b", timeout=1)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("GCS emulator did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=20)


@pytest.fixture
def gs_prefix(emulator, monkeypatch, request):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    prefix = f"gs://{BUCKET}/{request.node.name}"
    monkeypatch.setenv("LMFLOWS_PREFIX", prefix)
    fsspec.filesystem("gs").invalidate_cache()
    return prefix


@flow
def gs_chain():
    a = steps.source(5, return_state=True)
    b = steps.derive(a.result().cd("data.json"), k=3, return_state=True)
    return [a, b]


def test_run_commit_and_cache_on_gs(gs_prefix, emulator):
    first = gs_chain()
    assert [s.name for s in first] == ["Completed", "Completed"]
    a, b = (s.result() for s in first)
    assert b.path == f"{gs_prefix}/{b.name_with_hash}"
    fs = fsspec.filesystem("gs")
    root = gs_prefix.removeprefix("gs://")
    assert json.loads(fs.cat_file(f"{root}/{b.name_with_hash}/data.json")) == [0, 3, 6, 9, 12]
    record = json.loads(fs.cat_file(f"{root}/{a.name_with_hash}/.lmflows/commit.json"))
    assert record["metadata"]["serializer"] == {"type": "lmflows-stepref"}
    assert fs.exists(f"{root}/{a.name_with_hash}/.lmflows/provenance.json")
    assert not fs.exists(f"{root}/{a.name_with_hash}/.lmflows/lease.json")
    assert [s.name for s in gs_chain()] == ["Cached", "Cached"]

    # Another process (same identities, same bucket) sees everything committed.
    plan = run_python(
        ["-m", "flows", "status"],
        env={"STORAGE_EMULATOR_HOST": emulator, "LMFLOWS_PREFIX": gs_prefix},
    )
    assert plan.returncode == 0, plan.stderr
    assert "2 committed steps" in plan.stdout and a.name_with_hash in plan.stdout


def test_failed_step_on_gs_leaves_no_commit_and_reruns_after_clearing(gs_prefix, monkeypatch):
    @flow
    def one():
        return steps.flaky("g", return_state=True)

    monkeypatch.setenv("LMFLOWS_TEST_FAIL", "1")
    assert one(return_state=True).is_failed()
    fs = fsspec.filesystem("gs")
    out = steps.flaky.ref_for("g").path.removeprefix("gs://")
    assert not fs.exists(f"{out}/.lmflows/commit.json")
    fs.pipe_file(f"{out}/leftover.bin", b"dead attempt")
    monkeypatch.setenv("LMFLOWS_TEST_FAIL", "0")
    assert one().name == "Completed"
    fs.invalidate_cache()
    names = sorted(p.rsplit("/", 1)[1] for p in fs.find(out))
    assert names == ["commit.json", "done.txt", "partial.txt", "provenance.json"]
