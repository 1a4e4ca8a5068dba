"""Steps inside real Prefect flows (real server): caching, Prefect features, failures,
corrupt and planted records, copied buckets, --force."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
from prefect import flow
from prefect.states import State

from tasks.core import StepRef, set_force, storage
from tests.conftest import calls
from tests.helpers import steps
from tests.helpers.api import final_task_runs


@flow
def chain(n: int = 3, k: int = 2) -> dict:
    a = steps.source(n, return_state=True)
    b = steps.derive(a.result(), k=k, return_state=True)
    c = steps.derive(b.result().cd("data.json"), k=10, return_state=True)
    return {"states": [a, b, c], "refs": [a.result(), b.result(), c.result()]}


def state_names(states: list[State]) -> list[str]:
    return [s.name for s in states]


def test_second_run_is_all_cached_and_returns_the_same_refs(prefix, call_log):
    first = chain()
    assert state_names(first["states"]) == ["Completed"] * 3
    second = chain()
    assert state_names(second["states"]) == ["Cached"] * 3
    assert second["refs"] == first["refs"]
    assert [r.metadata for r in second["refs"]] == [r.metadata for r in first["refs"]]
    assert calls(call_log) == ["source-3", "derive-2", "derive-10"]


def test_function_receives_plain_paths_and_output_path(prefix, call_log):
    result = chain()
    a, b, c = result["refs"]
    assert b.metadata["src"] == f"{prefix}/{a.name_with_hash}"
    assert c.metadata["src"] == f"{prefix}/{b.name_with_hash}/data.json"
    assert json.loads(Path(c.path, "data.json").read_text()) == [0, 20, 40]
    assert a.metadata == {"n": 3} and a.path == f"{prefix}/{a.name_with_hash}"


def test_commit_record_is_json_inside_the_output_and_provenance_sits_beside_it(prefix):
    _, b, _ = chain()["refs"]
    meta = Path(b.path, ".lmflows")
    record = json.loads((meta / "commit.json").read_text())
    assert record["metadata"]["serializer"] == {"type": "lmflows-stepref"}
    assert record["metadata"]["storage_key"] == f"{b.name_with_hash}/.lmflows/commit.json"
    a_record = Path(steps.source.ref_for(3).path, ".lmflows/commit.json").read_text()
    assert prefix not in a_record, "records hold no trace of the prefix"
    prov = json.loads((meta / "provenance.json").read_text())
    assert prov["name"] == "t/derive" and prov["hash"] == b.hash
    assert prov["attrs"] == {"src": steps.source.ref_for(3).name_with_hash, "k": 2}
    assert prov["deps"][0]["identity"] == steps.source.ref_for(3).name_with_hash
    assert prov["function"] == "tests.helpers.steps.derive"
    assert prov["flow_run_id"] and prov["task_run_id"]
    assert prov["packages"]["prefect"].startswith("3.")
    assert prov["ended_at"] >= prov["started_at"]
    assert not Path(storage.lease_path(b.name_with_hash)).exists(), "lease released at commit"
    manifest = json.loads(record["result"])["manifest"]
    data = Path(b.path, "data.json").read_bytes()
    assert manifest == {
        "files": {"data.json": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}}
    }
    assert not list(Path(prefix).glob("*-*-*-*-*")), "no stray Prefect records at the root"


def test_submit_map_with_options_tags_and_retries(prefix, call_log, monkeypatch):
    @flow
    def fan_out():
        futures = steps.source.map([1, 2, 3])
        refs = futures.result()
        derived = steps.derive.submit(refs[0], k=5)
        with_retry = steps.flaky.with_options(retries=2, tags=["x"])
        return refs, derived.result(), with_retry("ok")

    monkeypatch.setenv("LMFLOWS_TEST_FAIL_ONCE", str(call_log.parent / "failed-once"))
    state = fan_out(return_state=True)
    assert state.is_completed(), state.message
    refs, derived, flaky_ref = state.result()
    assert [r.metadata["n"] for r in refs] == [1, 2, 3]
    assert derived.metadata["sum"] == 0
    assert isinstance(flaky_ref, StepRef) and flaky_ref.name == "t/flaky/ok"
    assert (call_log.parent / "failed-once").exists(), "the first attempt failed"
    again = fan_out()
    assert again[0] == refs
    assert sorted(calls(call_log)) == sorted(
        ["source-1", "source-2", "source-3", "derive-5", "flaky-ok", "flaky-ok"]
    ), "the retry ran the step a second time, then everything was cached"
    runs = final_task_runs(state.state_details.flow_run_id, 5)
    flaky_runs = [r for r in runs if r.name.startswith("t/flaky/ok-")]
    assert [r.tags for r in flaky_runs] == [["x"]], "tags reach the server"
    assert flaky_runs[0].run_count == 2 and flaky_runs[0].state.name == "Completed"


def test_a_step_that_raises_commits_nothing_and_is_called_again_after_clearing(
    prefix, call_log, monkeypatch
):
    @flow
    def one():
        return steps.flaky("f", return_state=True)

    monkeypatch.setenv("LMFLOWS_TEST_FAIL", "1")
    failed = one(return_state=True)
    assert failed.is_failed()
    ref = steps.flaky.ref_for("f")
    out = Path(ref.path)
    assert not out.exists(), "a failed attempt publishes nothing"
    failed_record = Path(storage.failed_path(ref.name_with_hash))
    assert json.loads(failed_record.read_text())["error"] == "RuntimeError"
    staging = Path(storage.staging_root(ref.name_with_hash))
    assert not staging.exists() or not list(staging.iterdir()), "its staging is discarded"
    dead = staging / "attempt-of-a-killed-process"  # what a SIGKILLed attempt leaves
    dead.mkdir(parents=True)
    (dead / "stale-from-dead-attempt.bin").write_bytes(b"x")
    monkeypatch.setenv("LMFLOWS_TEST_FAIL", "0")
    ok = one()
    assert ok.name == "Completed"
    assert sorted(p.name for p in out.iterdir()) == [".lmflows", "done.txt", "partial.txt"]
    assert not failed_record.exists()
    assert not staging.exists()
    assert calls(call_log) == ["flaky-f", "flaky-f"]


@pytest.mark.parametrize("content", [b"", b'{"metadata": {', b"\x00\xffgarbage"])
def test_corrupt_or_truncated_record_is_a_miss_with_a_warning(prefix, call_log, content, caplog):
    chain()
    record = Path(steps.source.ref_for(3).path, ".lmflows/commit.json")
    record.write_bytes(content)
    caplog.set_level("WARNING")
    result = chain()
    assert state_names(result["states"]) == ["Completed", "Cached", "Cached"]
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        f"commit record in {Path(record).parent.parent}" in w and "recomputing it" in w
        for w in warned
    ), warned
    assert calls(call_log).count("source-3") == 2
    assert json.loads(record.read_text())["metadata"]["serializer"]["type"] == "lmflows-stepref"


def test_planted_pickle_or_decoder_record_is_never_deserialised(prefix, call_log, tmp_path):
    import base64
    import pickle

    chain()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    record = Path(steps.source.ref_for(3).path, ".lmflows/commit.json")
    planted = {
        "metadata": {
            "storage_key": "x",
            "expiration": None,
            "serializer": {"type": "pickle", "picklelib": "pickle"},
            "prefect_version": "3.9.1",
            "storage_block_id": None,
        },
        "result": base64.b64encode(pickle.dumps(Exploit())).decode(),
    }
    record.write_text(json.dumps(planted))
    assert chain()["states"][0].name == "Completed"
    record.write_text(
        json.dumps(
            {
                **planted,
                "metadata": {
                    **planted["metadata"],
                    "serializer": {"type": "json", "object_decoder": "subprocess.getoutput"},
                },
                "result": json.dumps(f"touch {marker}"),
            }
        )
    )
    assert chain()["states"][0].name == "Completed"
    assert not marker.exists()


def test_copied_bucket_serves_cached_refs_under_the_new_prefix(
    prefix, call_log, tmp_path, monkeypatch
):
    first = chain()["refs"]
    copy = tmp_path / "region-b"
    shutil.copytree(prefix, copy)
    monkeypatch.setenv("LMFLOWS_PREFIX", str(copy))
    again = chain()
    assert state_names(again["states"]) == ["Cached"] * 3
    assert again["refs"] == first
    assert again["refs"][1].path == f"{copy}/{first[1].name_with_hash}"
    assert len(calls(call_log)) == 3


def test_force_reexecutes_only_matching_steps(prefix, call_log):
    chain()
    set_force(["t/source"])
    try:
        result = chain()
    finally:
        set_force([])
    assert state_names(result["states"]) == ["Completed", "Cached", "Cached"]
    assert calls(call_log) == ["source-3", "derive-2", "derive-10", "source-3"]


def test_refresh_cache_option_reexecutes_under_the_lease(prefix, call_log):
    @flow
    def refreshed():
        steps.source(7)
        return steps.source.with_options(refresh_cache=True)(7, return_state=True)

    assert refreshed().name == "Completed"
    assert calls(call_log) == ["source-7", "source-7"]
