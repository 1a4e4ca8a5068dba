"""gs:// against fake-gcs-server, a GCS fake that enforces generation preconditions (the
`ifGenerationMatch` the lease relies on): commits, caching, failures and hostile records on the
bucket. Concurrent processes, SIGKILL and expiry takeover and a holder that lost its lease are
the store contract's, run on gs:// too (tests/test_store_contract.py)."""

from __future__ import annotations

import json
import time

import fsspec
import pytest
from prefect import flow

from benches.common import fake_gcs
from tasks.core import lease, storage, stores
from tests.conftest import run_python
from tests.helpers import steps

BUCKET = "lmflows-test"


@pytest.fixture(scope="module")
def emulator():
    """fake-gcs-server on 127.0.0.1 with the test bucket (shared with the benchmarks)."""
    with fake_gcs(BUCKET, set_env=False) as url:
        yield url


@pytest.fixture
def gs_prefix(emulator, monkeypatch, request):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    prefix = f"gs://{BUCKET}/{request.node.name.replace('[', '-').replace(']', '')}"
    monkeypatch.setenv("LMFLOWS_PREFIX", prefix)
    fsspec.filesystem("gs").invalidate_cache()
    return prefix


def gcs() -> fsspec.AbstractFileSystem:
    fs = fsspec.filesystem("gs")
    fs.invalidate_cache()
    return fs


@flow
def gs_chain():
    a = steps.source(5, return_state=True)
    b = steps.derive(a.result().cd("data.json"), k=3, return_state=True)
    return [a, b]


# --- the fake is honest about preconditions -----------------------------------------------


def test_the_fake_refuses_writes_that_lost_the_generation_race(gs_prefix):
    store = stores.store_for(gs_prefix)
    path = storage.lease_path("t/race-0123456789")
    body = {"token": "a", "expires_at": time.time() + 60, "holder": "a", "host": "h", "pid": 1}
    assert store.write_if_version(path, json.dumps(body).encode(), "0")  # create: generation 0
    assert not store.write_if_version(path, json.dumps({**body, "token": "b"}).encode(), "0")
    _, generation = store.read_versioned(path, 1 << 16)
    assert not store.write_if_version(path, b"{}", str(int(generation) + 1))  # a stale one
    assert store.write_if_version(path, json.dumps({**body, "token": "c"}).encode(), generation)
    assert lease.read(path)["token"] == "c"


# --- commits and caching --------------------------------------------------------------------


def test_run_commit_and_cache_on_gs(gs_prefix, emulator):
    first = gs_chain()
    assert [s.name for s in first] == ["Completed", "Completed"]
    a, b = (s.result() for s in first)
    assert b.path == f"{gs_prefix}/{b.name_with_hash}"
    fs = gcs()
    root = gs_prefix.removeprefix("gs://")
    assert json.loads(fs.cat_file(f"{root}/{b.name_with_hash}/data.json")) == [0, 3, 6, 9, 12]
    record = json.loads(fs.cat_file(f"{root}/{a.name_with_hash}/.lmflows/commit.json"))
    assert record["metadata"]["serializer"] == {"type": "lmflows-stepref"}
    manifest = json.loads(record["result"])["manifest"]["files"]["data.json"]
    assert manifest["bytes"] == len(fs.cat_file(f"{root}/{a.name_with_hash}/data.json"))
    assert manifest["generation"] and manifest["crc32c"]
    assert fs.exists(f"{root}/{a.name_with_hash}/.lmflows/provenance.json")
    assert not fs.exists(storage.lease_path(a.name_with_hash).removeprefix("gs://"))
    assert [s.name for s in gs_chain()] == ["Cached", "Cached"]

    status = run_python(
        ["-m", "flows", "status"],
        env={"STORAGE_EMULATOR_HOST": emulator, "LMFLOWS_PREFIX": gs_prefix},
    )
    assert status.returncode == 0, status.stderr
    assert "2 committed steps" in status.stdout and a.name_with_hash in status.stdout


def test_failed_step_on_gs_leaves_no_commit_and_reruns_after_clearing(gs_prefix, monkeypatch):
    @flow
    def one():
        return steps.flaky("g", return_state=True)

    monkeypatch.setenv("LMFLOWS_TEST_FAIL", "1")
    assert one(return_state=True).is_failed()
    fs = gcs()
    out = steps.flaky.ref_for("g").path.removeprefix("gs://")
    assert not fs.exists(f"{out}/.lmflows/commit.json")
    fs.pipe_file(f"{out}/leftover.bin", b"dead attempt")
    monkeypatch.setenv("LMFLOWS_TEST_FAIL", "0")
    assert one().name == "Completed"
    names = sorted(p.rsplit("/", 1)[1] for p in gcs().find(out))
    assert names == ["commit.json", "done.txt", "partial.txt", "provenance.json"]


# --- hostile records and damaged outputs on the bucket ---------------------------------------


def test_copied_record_deleted_or_overwritten_object_are_misses_on_gs(gs_prefix, caplog):
    a, b = (s.result() for s in gs_chain())
    fs = gcs()
    root = gs_prefix.removeprefix("gs://")
    caplog.set_level("WARNING")
    # B's record copied into A's folder
    fs.copy(
        f"{root}/{b.name_with_hash}/.lmflows/commit.json",
        f"{root}/{a.name_with_hash}/.lmflows/commit.json",
    )
    assert [s.name for s in gs_chain()][0] == "Completed"
    assert any(f"belongs to '{b.name_with_hash}'" in r.getMessage() for r in caplog.records)
    # an object overwritten with the same bytes: same size, new generation
    data = f"{root}/{a.name_with_hash}/data.json"
    fs.pipe_file(data, fs.cat_file(data))
    assert [s.name for s in gs_chain()][0] == "Completed"
    assert any("data.json changed (generation" in r.getMessage() for r in caplog.records)
    # an object deleted
    fs.rm_file(data)
    assert [s.name for s in gs_chain()][0] == "Completed"
    assert any("file data.json is missing" in r.getMessage() for r in caplog.records)
    assert json.loads(gcs().cat_file(data)) == [0, 1, 2, 3, 4]


def test_a_poisoned_lease_on_gs_is_treated_as_expired(gs_prefix, caplog):
    ref = steps.source.ref_for(5)
    gcs().pipe_file(storage.lease_path(ref.name_with_hash).removeprefix("gs://"), b"[1]")
    caplog.set_level("WARNING")
    assert [s.name for s in gs_chain()][0] == "Completed"
    assert any("treating it as expired" in r.getMessage() for r in caplog.records)
