"""The store contract (tasks/core/stores.py), run over every store: local disk, gs:// on
fake-gcs-server (a fake that enforces generation preconditions), memory://, and a generic
fsspec filesystem, which must refuse leases in one line because it has no atomic conditional
write. The same promises hold on each: whole-file writes and bounded reads, one winner among
racing lease takers, committed outputs listed, checked and deleted, and, across real
processes, each step body run once, a SIGKILLed holder taken over, a live lease of another
host waited out, and a holder that lost its lease never committing."""

from __future__ import annotations

import dataclasses
import json
import signal
import socket
import threading
import time
import uuid
from pathlib import Path

import fsspec
import pytest
from fsspec.implementations.local import LocalFileSystem
from prefect import flow

from benches.common import fake_gcs
from tasks.core import inventory, lease, manifest, outputs, storage, stores
from tests.conftest import calls
from tests.helpers import steps
from tests.helpers.processes import start, wait_for

BUCKET = "lmflows-contract"


@dataclasses.dataclass
class Backend:
    kind: str
    prefix: str
    env: dict  # what a worker process needs to reach the store

    def read(self, url: str) -> bytes:
        return storage.read_bytes(url)

    def write(self, url: str, data: bytes) -> None:
        storage.write_atomic(url, data)

    def exists(self, url: str) -> bool:
        return stores.store_for(url).exists(url)


@pytest.fixture(scope="module")
def emulator():
    with fake_gcs(BUCKET, set_env=False) as url:
        yield url


def _backend(kind: str, request, monkeypatch, tmp_path) -> Backend:
    env: dict = {}
    name = f"{request.node.name}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    if kind == "local":
        prefix = str(tmp_path / ".lmflows" / "outputs")
    elif kind == "gs":
        url = request.getfixturevalue("emulator")
        env = {"STORAGE_EMULATOR_HOST": url}
        prefix = f"gs://{BUCKET}/{name}"
        fsspec.filesystem("gs").invalidate_cache()
    else:
        prefix = f"memory://{name}"
    for key, value in {**env, "LMFLOWS_PREFIX": prefix}.items():
        monkeypatch.setenv(key, value)
    return Backend(kind, prefix, {**env, "LMFLOWS_PREFIX": prefix})


@pytest.fixture(params=["local", "gs", "memory"])
def backend(request, monkeypatch, tmp_path) -> Backend:
    return _backend(request.param, request, monkeypatch, tmp_path)


@pytest.fixture(params=["local", "gs"])
def shared_backend(request, monkeypatch, tmp_path) -> Backend:
    """The stores that several processes (and machines) share."""
    return _backend(request.param, request, monkeypatch, tmp_path)


# --- in one process ------------------------------------------------------------------------


def test_whole_file_writes_and_bounded_reads(backend):
    url = storage.join(backend.prefix, "a", "b.json")
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(url)
    storage.write_atomic(url, b"first")
    storage.write_atomic(url, b"second, longer")
    assert storage.read_bytes(url) == b"second, longer"
    with pytest.raises(stores.UnreadableRecord, match="at most 4"):
        storage.read_bytes(url, limit=4)  # a planted huge file is never read whole
    storage.remove_file(url)
    storage.remove_file(url)  # absent is fine
    assert not backend.exists(url)


def test_one_of_racing_lease_takers_wins_and_only_its_token_renews(backend):
    path = storage.lease_path("t/race-0123456789")
    start = threading.Barrier(6)
    won: list[str] = []

    def take(holder: str) -> None:
        start.wait()
        if lease.try_acquire(path, holder):
            won.append(holder)

    takers = [threading.Thread(target=take, args=(f"h{i}",)) for i in range(6)]
    for taker in takers:
        taker.start()
    for taker in takers:
        taker.join()
    try:
        assert len(won) == 1, won
        current = lease.read(path)
        assert current["holder"] == won[0] and lease.is_live(current)
        backend_ = lease._backend(path)
        stolen = {**current, "token": "thief", "holder": "thief"}
        assert not backend_.replace_if(path, "not-the-token", stolen)  # a stale renewal
        assert not backend_.replace_if(path, None, stolen, only_if_free=True)  # it is live
        assert lease.read(path)["holder"] == won[0]
    finally:
        lease.release(path, won[0] if won else None)
    assert lease.read(path) is None  # released: gone
    assert lease.try_acquire(path, "next")
    lease.release(path, "next")


def _lease_body(holder: str) -> dict:
    now = time.time()
    return {"holder": holder, "token": holder, "host": "h", "pid": 1, "expires_at": now + 60}


def test_a_compare_and_swap_on_a_stale_read_never_wins_as_well(backend):
    """One writer reads the free lease and, before it writes, another takes the lease. Stores
    that exclude (local disk, memory) make the other wait; stores that version (gs://) refuse
    the stale write. Either way exactly one of the two wins, and the lease names it."""
    path = storage.lease_path("t/stale-0123456789")
    store = stores.store_for(path)
    results: dict[str, bool] = {}

    def other() -> None:
        results["other"] = lease._backend(path).replace_if(
            path, None, _lease_body("other"), only_if_free=True
        )

    with store.exclusive(path):
        content, version = store.read_versioned(path, 1 << 16)
        assert content is None
        meanwhile = threading.Thread(target=other)
        meanwhile.start()
        meanwhile.join(timeout=2)  # excluded: still waiting; versioned: done
        results["mine"] = store.write_if_version(
            path, json.dumps(_lease_body("mine")).encode(), version
        )
    meanwhile.join(timeout=30)
    assert sorted(results.values()) == [False, True], results
    winner = "mine" if results["mine"] else "other"
    assert lease.read(path)["holder"] == winner


def test_a_failed_lease_read_writes_nothing(backend, monkeypatch):
    """A read that fails for a reason other than a planted file (a timeout, a refused
    connection) must not count as "expired": read so, it carried no version, and on gs:// the
    next write went out without its precondition and overwrote a live lease."""
    path = storage.lease_path("t/flaky-0123456789")
    store = stores.store_for(path)
    theirs = {**_lease_body("theirs"), "host": "another-machine"}
    assert lease._backend(path).replace_if(path, None, theirs, only_if_free=True)
    real = type(store).read_versioned

    def timed_out(self, url, limit):
        raise TimeoutError("simulated: the read timed out")

    monkeypatch.setattr(type(store), "read_versioned", timed_out)
    with pytest.raises(TimeoutError):
        lease._backend(path).replace_if(path, None, _lease_body("mine"), only_if_free=True)
    monkeypatch.setattr(type(store), "read_versioned", real)
    assert lease.read(path)["holder"] == "theirs"


def test_a_planted_unreadable_lease_counts_as_expired(backend, caplog):
    path = storage.lease_path("t/poison-0123456789")
    storage.write_atomic(path, b"[1]")
    assert lease.read(path) == {}
    caplog.set_level("WARNING")
    assert lease.try_acquire(path, "me")
    lease.release(path, "me")


@flow
def _one_source() -> object:
    return steps.source(5)


def test_a_committed_output_is_listed_checked_and_deleted(backend, call_log):
    ref = _one_source()
    assert calls(call_log) == ["source-5"]
    out = ref.path
    listed = {s.name_with_hash: s for s in inventory.committed_steps(backend.prefix)}
    assert list(listed) == [ref.name_with_hash]
    assert listed[ref.name_with_hash].size_bytes >= len(b"[0, 1, 2, 3, 4]")
    assert [f["path"] for f in inventory.list_files(out)] == ["data.json"]
    committed = manifest.build(out)
    assert committed["files"]["data.json"]["bytes"] == len(b"[0, 1, 2, 3, 4]")
    assert (
        manifest.quick_problem(out, committed) is None and manifest.problems(out, committed) == []
    )
    assert _one_source().name_with_hash == ref.name_with_hash  # cached
    assert calls(call_log) == ["source-5"]

    backend.write(f"{out}/extra.txt", b"planted")
    assert manifest.problems(out, committed) == ["file extra.txt is not in the manifest"]
    backend.write(f"{out}/data.json", b"[9]")
    assert manifest.quick_problem(out, committed).startswith("file data.json ")
    assert "file data.json changed" in manifest.problems(out, committed)
    storage.remove_file(f"{out}/data.json")
    assert manifest.quick_problem(out, committed) == "file data.json is missing"

    outputs.delete_output(ref.name_with_hash, backend.prefix)
    assert inventory.committed_steps(backend.prefix) == []
    assert not backend.exists(f"{out}/extra.txt")


def test_an_isolated_step_on_a_store_only_this_process_sees_is_refused_in_one_line(
    monkeypatch, call_log
):
    """memory:// is this process's: a body in a worker process would write into its own copy
    and the output would be committed empty (found by an attack)."""
    monkeypatch.setenv("LMFLOWS_PREFIX", f"memory://isolated-{uuid.uuid4().hex[:6]}")

    @flow
    def isolated_flow():
        return steps.isolated(3)

    state = isolated_flow(return_state=True)
    assert state.is_failed()
    assert "runs its body in a worker process (isolate=True)" in state.message
    assert inventory.committed_steps() == []


class _PlainFsspec(LocalFileSystem):
    """Local files reached through fsspec under another protocol: a real fsspec backend with
    no atomic conditional write, as s3fs or sftp would be."""

    protocol = ("lmtest",)

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(auto_mkdir=True)

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(str(path).removeprefix("lmtest://"))


def test_a_store_without_conditional_writes_refuses_leases_in_one_line(
    tmp_path, monkeypatch, call_log
):
    fsspec.register_implementation("lmtest", _PlainFsspec, clobber=True)
    prefix = f"lmtest://{tmp_path}/outputs"
    store = stores.store_for(prefix)
    assert type(store) is stores.FsspecStore
    url = storage.join(prefix, "x", "data.json")
    storage.write_atomic(url, b"[1, 2]")  # reads, writes and listings work
    assert storage.read_bytes(url) == b"[1, 2]"
    assert store.file_entries(storage.join(prefix, "x"), checksums=True)["data.json"]["bytes"] == 6

    path = storage.lease_path("t/source-0123456789", prefix)
    with pytest.raises(stores.LeaseUnsupportedError) as refused:
        lease.try_acquire(path, "me")
    assert "\n" not in str(refused.value)
    assert "lmtest:// filesystem offers no atomic conditional write" in str(refused.value)
    assert lease.read(path) is None  # nothing was written

    from flows.cli import _check_writable  # what `run` checks before any step

    with pytest.raises(storage.PrefixError, match="no atomic conditional write"):
        _check_writable(prefix)
    monkeypatch.setenv("LMFLOWS_PREFIX", prefix)
    state = _one_source(return_state=True)
    assert state.is_failed() and "no atomic conditional write" in state.message
    assert calls(call_log) == []  # refused before the body ran


# --- across real processes -------------------------------------------------------------------


def last_json(stdout: str) -> dict:
    return json.loads(stdout.strip().splitlines()[-1])


def test_three_processes_run_each_step_body_once(shared_backend, tmp_path):
    log = tmp_path / "calls.log"
    env = {**shared_backend.env, "LMFLOWS_TEST_LOG": str(log), "LMFLOWS_TEST_SLEEP": "1.5"}
    procs = [start(["chain", "4", "3"], env) for _ in range(3)]
    outputs_ = [p.communicate(timeout=240) for p in procs]
    for proc, (_, err) in zip(procs, outputs_):
        assert proc.returncode == 0, err[-3000:]
    assert sorted(calls(log)) == ["derive-3", "source-4"]
    states = [last_json(out)["states"] for out, _ in outputs_]
    assert sorted(s[0] for s in states) == ["Cached", "Cached", "Completed"]
    assert sorted(s[1] for s in states) == ["Cached", "Cached", "Completed"]


def test_a_sigkilled_holder_is_taken_over_at_once_and_its_files_never_served(
    shared_backend, tmp_path
):
    """The default 90 s lease has not expired: the takeover is immediate because the holder
    is a dead process on this host (its pid and start time say so)."""
    ready = tmp_path / "ready"
    first = start(
        ["blocker", "k"],
        {
            **shared_backend.env,
            "LMFLOWS_TEST_READY": str(ready),
            "LMFLOWS_TEST_RELEASE": str(tmp_path / "never"),
        },
    )
    wait_for(ready)
    ref = steps.blocker.ref_for("k")
    held = json.loads(shared_backend.read(storage.lease_path(ref.name_with_hash)))
    assert held["pid"] == first.pid
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    staging = Path(storage.staging_root(ref.name_with_hash))
    if shared_backend.kind == "local":  # the dead attempt wrote into its own folder only
        (dead,) = staging.iterdir()
        assert (dead / "partial.txt").read_text() == f"attempt by {first.pid}"
        assert not Path(ref.path).exists()
    assert not shared_backend.exists(storage.meta_path(ref.name_with_hash, storage.COMMIT_FILE))

    release = tmp_path / "release"
    release.write_text("go")
    started = time.monotonic()
    second = start(["blocker", "k"], {**shared_backend.env, "LMFLOWS_TEST_RELEASE": str(release)})
    stdout, stderr = second.communicate(timeout=180)
    assert second.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started < 60
    assert last_json(stdout)["task"] == "Completed"
    assert shared_backend.read(f"{ref.path}/partial.txt").decode() == f"attempt by {second.pid}"
    assert shared_backend.read(f"{ref.path}/done.txt").decode() == f"finished by {second.pid}"
    provenance = json.loads(shared_backend.read(f"{ref.path}/.lmflows/provenance.json"))
    assert provenance["pid"] == second.pid
    if shared_backend.kind == "local":
        assert not staging.exists(), "no staging folder is left behind"


def test_a_live_lease_of_another_host_is_waited_out_then_taken_over(shared_backend, tmp_path):
    ref = steps.blocker.ref_for("remote")
    for name in ("partial.txt", "stray.txt"):
        shared_backend.write(f"{ref.path}/{name}", b"written by a machine that vanished")
    now = time.time()
    planted = {
        "holder": "elsewhere",
        "token": "t0",
        "host": "some-other-host",
        "pid": 1,
        "pid_started": 0,
        "acquired_at": now,
        "expires_at": now + 6,
    }
    shared_backend.write(storage.lease_path(ref.name_with_hash), json.dumps(planted).encode())
    release = tmp_path / "release"
    release.write_text("go")
    started = time.monotonic()
    proc = start(
        ["blocker", "remote"], {**shared_backend.env, "LMFLOWS_TEST_RELEASE": str(release)}
    )
    _, stderr = proc.communicate(timeout=180)
    assert proc.returncode == 0, stderr[-3000:]
    assert time.monotonic() - started >= 5.0, "a live lease of another host must be respected"
    assert shared_backend.read(f"{ref.path}/partial.txt").decode() == f"attempt by {proc.pid}"
    assert not shared_backend.exists(f"{ref.path}/stray.txt"), "leftovers never join an output"


def test_a_holder_that_lost_its_lease_never_commits(shared_backend, tmp_path):
    env = {**shared_backend.env, "LMFLOWS_LEASE_SECONDS": "3"}
    ready, release = tmp_path / "ready", tmp_path / "release"
    first = start(
        ["blocker", "lost"],
        {**env, "LMFLOWS_TEST_READY": str(ready), "LMFLOWS_TEST_RELEASE": str(release)},
    )
    wait_for(ready)
    ref = steps.blocker.ref_for("lost")
    lease_path = storage.lease_path(ref.name_with_hash)
    first.send_signal(signal.SIGSTOP)  # a paused holder: no renewals, but alive
    try:
        time.sleep(4)
        held = json.loads(shared_backend.read(lease_path))
        assert held["pid"] == first.pid and held["expires_at"] < time.time()
        # as if the paused holder lived on another host: only expiry frees its lease
        moved = {**held, "host": f"not-{socket.gethostname()}"}
        shared_backend.write(lease_path, json.dumps(moved).encode())
        second = start(
            ["blocker", "lost"],
            {
                **env,
                "LMFLOWS_TEST_RELEASE": str(release),
                "LMFLOWS_TEST_READY": str(tmp_path / "r2"),
            },
        )
        wait_for(tmp_path / "r2")
    finally:
        first.send_signal(signal.SIGCONT)
    release.write_text("go")
    out1, err1 = first.communicate(timeout=180)
    out2, err2 = second.communicate(timeout=180)
    assert second.returncode == 0, err2[-3000:]
    assert first.returncode != 0, out1
    assert "LeaseLostError" in err1 or "lease" in (out1 + err1).lower()
    record = json.loads(shared_backend.read(f"{ref.path}/.lmflows/commit.json"))
    assert json.loads(record["result"])["metadata"] == {"pid": second.pid}
    provenance = json.loads(shared_backend.read(f"{ref.path}/.lmflows/provenance.json"))
    assert provenance["pid"] == second.pid
    if shared_backend.kind != "local":
        return  # gs:// attempts write in place: the manifest's generations guard it instead
    # the paused holder woke up and wrote its files after losing: never into the output
    assert shared_backend.read(f"{ref.path}/partial.txt").decode() == f"attempt by {second.pid}"
    assert shared_backend.read(f"{ref.path}/done.txt").decode() == f"finished by {second.pid}"
