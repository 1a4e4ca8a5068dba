"""Steps used by the tests. Behaviour is steered by environment variables so that the same
steps run in the test process and in the worker processes the tests start."""

from __future__ import annotations

import dataclasses
import enum
import json
import os
import time
from pathlib import Path

import fsspec

from tasks.core import step


def _write(path: str, text: str) -> None:
    with fsspec.open(path, "w") as handle:  # local or gs://: steps write through fsspec
        handle.write(text)


def _read(path: str) -> str:
    with fsspec.open(path, "r") as handle:
        return handle.read()


def ready_then_wait_for_release(seconds: float, poll: float = 0.1) -> None:
    """Write this pid to the file LMFLOWS_TEST_READY names, then wait until the file
    LMFLOWS_TEST_RELEASE exists (at most `seconds`): a test's handshake with a step body."""
    ready = os.environ.get("LMFLOWS_TEST_READY")
    if ready:
        Path(ready).write_text(str(os.getpid()))
    release = os.environ.get("LMFLOWS_TEST_RELEASE")
    deadline = time.time() + seconds
    while release and not os.path.exists(release) and time.time() < deadline:
        time.sleep(poll)


def _log(label: str) -> None:
    log = os.environ.get("LMFLOWS_TEST_LOG")
    if log:
        fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        os.write(fd, f"{label} {os.getpid()}\n".encode())
        os.close(fd)


@step(hash_attrs=["n"], operational=["workers"], name="t/source")
def source(n: int, workers: int = 1, *, output_path: str) -> dict:
    """`workers` is operational: not a hash attribute."""
    _log(f"source-{n}")
    time.sleep(float(os.environ.get("LMFLOWS_TEST_SLEEP", "0")))
    _write(f"{output_path}/data.json", json.dumps(list(range(n))))
    return {"n": n}


@step(hash_attrs=["src", "k"], name="t/derive")
def derive(src: str, k: int = 1, *, output_path: str) -> dict:
    _log(f"derive-{k}")
    time.sleep(float(os.environ.get("LMFLOWS_TEST_SLEEP", "0")))
    data = json.loads(_read(src if src.endswith(".json") else f"{src}/data.json"))
    _write(f"{output_path}/data.json", json.dumps([v * k for v in data]))
    return {"sum": sum(v * k for v in data), "src": src}


@step(hash_attrs=["parts", "named"], name="t/gather")
def gather(parts: list, named: dict, *, output_path: str) -> dict:
    _log("gather")
    Path(output_path, "inputs.json").write_text(json.dumps({"parts": parts, "named": named}))
    return {"parts": parts, "named": named}


@step(hash_attrs=["label"], name="t/flaky/{label}")
def flaky(label: str, *, output_path: str) -> dict:
    """Writes a partial file, then fails while LMFLOWS_TEST_FAIL=1 (or on the first attempt
    when LMFLOWS_TEST_FAIL_ONCE names a file that does not exist yet)."""
    _log(f"flaky-{label}")
    _write(f"{output_path}/partial.txt", f"attempt by {os.getpid()}")
    if os.environ.get("LMFLOWS_TEST_FAIL") == "1":
        raise RuntimeError("planned failure")
    once = os.environ.get("LMFLOWS_TEST_FAIL_ONCE")  # fail the first attempt only
    if once and not os.path.exists(once):
        Path(once).write_text("failed once")
        raise RuntimeError("planned failure of the first attempt")
    _write(f"{output_path}/done.txt", f"finished by {os.getpid()}")
    return {"pid": os.getpid()}


@step(hash_attrs=["label"], name="t/blocker")
def blocker(label: str, *, output_path: str) -> dict:
    """Writes a partial file, says it is ready, then waits for a release file (or 600 s)."""
    _log(f"blocker-{label}")
    _write(f"{output_path}/partial.txt", f"attempt by {os.getpid()}")
    ready_then_wait_for_release(600)
    _write(f"{output_path}/done.txt", f"finished by {os.getpid()}")
    return {"pid": os.getpid()}


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Shape:
    sides: int
    color: Color


@step(hash_attrs=["config"], name="t/typed")
def typed(config: object, *, output_path: str) -> dict:
    return {"ok": True}


# --- concurrency and placement -------------------------------------------------------------


def _stamp(label: str, output_path: str, **facts: object) -> dict:
    """Write when this body ran (and where) into the output, and return it as metadata."""
    record = {"label": label, "pid": os.getpid(), **facts}
    _write(f"{output_path}/stamp.json", json.dumps(record))
    return record


@step(hash_attrs=["label", "seconds"], name="t/nap-{label}")
def nap(label: str, seconds: float, *, output_path: str) -> dict:
    """Sleep, recording start and end times (overlap tests)."""
    _log(f"nap-{label}")
    pid_file = os.environ.get("LMFLOWS_TEST_PID_DIR")
    if pid_file:  # lets a test find (and SIGKILL) the process running this body
        Path(pid_file, f"nap-{label}-{os.getpid()}").write_text(str(os.getpid()))
    started = time.time()
    time.sleep(seconds)
    return _stamp(label, output_path, started=started, ended=time.time())


@step(hash_attrs=["inputs"], name="t/consume")
def consume(inputs: list, *, output_path: str) -> dict:
    """A consumer: records, when it starts, whether each producer was committed."""
    _log("consume")
    committed = [os.path.exists(f"{p}/.lmflows/commit.json") for p in inputs]
    return _stamp("consume", output_path, started=time.time(), producers_committed=committed)


@step(hash_attrs=["label"], operational=["seconds"], name="t/fail-{label}")
def fail_after(label: str, seconds: float = 0.5, *, output_path: str) -> dict:
    _log(f"fail-{label}")
    time.sleep(seconds)
    raise RuntimeError(f"planned failure {label}")


@step(hash_attrs=["total"], operational=["pause"], name="t/count", resumable=True)
def count_up(total: int, pause: float = 0.0, *, output_path: str) -> dict:
    """A resumable step shaped like training: numbered 'checkpoints' whose `done` marker is
    written last; a new attempt continues after the newest complete one."""
    fs, root = fsspec.core.url_to_fs(output_path)
    complete = sorted(
        int(p.rstrip("/").split("-")[-1].split("/")[0]) for p in fs.glob(f"{root}/ckpt-*/done")
    )
    resumed = complete[-1] if complete else None
    from tasks.core import provenance

    provenance.note(resumed_from_step=resumed)
    _log(f"count-from-{resumed}")
    for i in range((resumed or 0) + 1, total + 1):
        if os.environ.get("LMFLOWS_TEST_FAIL_AT") == str(i):
            raise RuntimeError(f"planned failure at {i}")
        time.sleep(pause)
        _write(f"{output_path}/ckpt-{i:03d}/value", str(i))
        _write(f"{output_path}/ckpt-{i:03d}/by", str(os.getpid()))
        _write(f"{output_path}/ckpt-{i:03d}/done", "")
    return {"resumed_from": resumed}


def _ticking_body(n: int, sleep: float, output_path: str) -> dict:
    """Log a timestamped tick every 0.1 s for `sleep` seconds (tests see when a body stops),
    then commit or fail as `n` says: n < 0 a known refusal, n == 0 a genuine bug."""
    _log(f"body-{n}")
    deadline = time.time() + sleep
    while time.time() < deadline:
        _log(f"tick-{n}@{time.time():.3f}")
        time.sleep(0.1)
    if n < 0:
        from tasks.core.storage import LinkedPathError

        raise LinkedPathError(f"planted refusal for n={n}")
    if n == 0:
        raise ZeroDivisionError("a genuine bug in a step body")
    _write(f"{output_path}/data.json", json.dumps(list(range(n))))
    return {"pid": os.getpid(), "n": n}


@step(hash_attrs=["n"], operational=["sleep"], name="t/isolated", isolate=True)
def isolated(n: int, sleep: float = 0.0, *, output_path: str) -> dict:
    """Runs in a worker process of its own; notes its pid in the provenance."""
    from tasks.core.provenance import note

    note(worker_pid=os.getpid())
    return _ticking_body(n, sleep, output_path)


@step(hash_attrs=["label"], operational=["die"], name="t/isolated-env", isolate=True)
def isolated_env(label: str, die: bool = False, *, output_path: str) -> dict:
    """What a forked body sees of its caller: LMFLOWS_TEST_MARK, the working directory, and
    whether an earlier body's change to os.environ leaked into it; prints a line; `die`:
    SIGKILL itself."""
    import signal

    if die:
        os.kill(os.getpid(), signal.SIGKILL)
    leaked = os.environ.get("LMFLOWS_TEST_LEAK")
    os.environ["LMFLOWS_TEST_LEAK"] = label
    print(f"isolated-env says {label}", flush=True)
    _write(f"{output_path}/label.txt", label)
    import numpy as np

    with open("/proc/self/status") as status:
        umask = next(int(line.split()[1], 8) for line in status if line.startswith("Umask:"))
    return {
        "mark": os.environ.get("LMFLOWS_TEST_MARK"),
        "cwd": os.getcwd(),
        "leaked": leaked,
        "pid": os.getpid(),
        "parent": os.getppid(),
        "umask": umask,
        "random": float(np.random.rand()),
    }


@step(hash_attrs=["label"], name="t/two-files")
def two_files(label: str, *, output_path: str) -> dict:
    """An output of two files: a.txt, then z.txt (last in every order)."""
    _log(f"two-files-{label}")
    _write(f"{output_path}/a.txt", "a" * 100)
    _write(f"{output_path}/z.txt", "z" * 100)
    return {"label": label}


@step(hash_attrs=["n"], operational=["sleep"], name="t/ticking")
def ticking(n: int, sleep: float = 0.0, *, output_path: str) -> dict:
    """The same body in the task's own thread."""
    return _ticking_body(n, sleep, output_path)


@step(hash_attrs=["label"], name="t/announcing", isolate=True)
def announcing(label: str, *, output_path: str) -> dict:
    """Emits the Prefect event `lmflows.test.announced` (resource `lmflows.test.LABEL`) as
    its last act: whether a worker process sends what it queued before it exits."""
    from prefect.events import emit_event

    emit_event(
        event="lmflows.test.announced", resource={"prefect.resource.id": f"lmflows.test.{label}"}
    )
    return {"label": label}
