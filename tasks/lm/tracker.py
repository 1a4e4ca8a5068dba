"""A levanter tracker that writes metrics as JSON lines and reports progress to Prefect.

levanter's trainer logs every metric through its tracker; writing them to a file inside the
step's output (instead of W&B) keeps training offline and leaves the curve with the model.

The file may be on any fsspec filesystem. A local file is appended to and flushed line by
line. A remote object (gs://) cannot be appended to: the tracker keeps a local copy (seeded
with what the object already holds, so a resumed run appends to its earlier attempts' rows),
and rewrites the whole object at most every `UPLOAD_SECONDS` and at finish, so a preempted
run leaves its metrics so far.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import fsspec
from levanter.tracker import Tracker, TrackerConfig

from tasks.core import stores

logger = logging.getLogger("lmflows.tracker")

UPLOAD_SECONDS = 10.0


def _plain(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


def _drop_partial_last_line(path: str) -> bool:
    """A row cut off by a killed attempt (no newline at the end) would glue itself to the next
    attempt's first row and make the file unreadable: cut it off. True if it did."""
    if not os.path.exists(path):
        return False
    with open(path, "rb+") as handle:
        content = handle.read()
        if content and not content.endswith(b"\n"):
            handle.truncate(content.rfind(b"\n") + 1)
            return True
    return False


def repair(path: str) -> None:
    """Cut off a row that a killed attempt left half-written in the metrics at `path` (any
    fsspec URL), as opening it for a new attempt does."""
    _JsonLines(path).close()


class _JsonLines:
    """An append-only JSON-lines file at any fsspec URL (see the module docstring)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._last_upload = 0.0
        self._dirty = False
        target = stores.store_for(path).local_path(path)  # None: an object store
        if target is not None:
            os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
            self._tmpdir = None
            self._local = target
        else:
            self._tmpdir = tempfile.mkdtemp(prefix="lmflows-metrics-")
            self._local = os.path.join(self._tmpdir, "metrics.jsonl")
            fs, remote = fsspec.core.url_to_fs(path)
            if fs.exists(remote):  # an earlier attempt's rows: append after them
                fs.get_file(remote, self._local)
        self._dirty = _drop_partial_last_line(self._local)
        self._file = open(self._local, "a")  # noqa: SIM115 - closed in close()

    def write(self, row: dict[str, Any]) -> None:
        with self._lock:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
            self._dirty = True
        if self._tmpdir is not None and time.monotonic() - self._last_upload >= UPLOAD_SECONDS:
            self.upload()

    def upload(self) -> None:
        """Rewrite the remote object with everything written so far (no-op when local)."""
        if self._tmpdir is None:
            return
        with self._lock:
            if not self._dirty:
                return
            self._file.flush()
            self._dirty = False
            self._last_upload = time.monotonic()
            fs, remote = fsspec.core.url_to_fs(self.path)
            fs.put_file(self._local, remote)

    def close(self) -> None:
        if self._file.closed:
            return
        self.upload()
        self._file.close()
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)


class JsonlTracker(Tracker):
    name: str = "lmflows_jsonl"

    def __init__(
        self,
        path: str,
        on_step: Callable[[int, Mapping[str, Any]], None] | None,
        attempt: str | None = None,
    ):
        self.path = path
        self.on_step = on_step
        self.attempt = attempt
        self._out = _JsonLines(path)
        _OPEN.setdefault(path, []).append(self)
        self.summary: dict[str, Any] = {}

    def log_hyperparameters(self, hparams: dict[str, Any]) -> None:
        pass  # the step's provenance already records every hash attribute

    def log(self, metrics: Mapping[str, Any], *, step: int | None, commit: bool | None = None):
        scalars = {
            k: _plain(v)
            for k, v in metrics.items()
            if not hasattr(v, "shape") or getattr(v, "size", 1) == 1
        }
        row = {"step": step, **scalars}
        if self.attempt is not None:
            row["attempt"] = self.attempt
        self._out.write(row)
        if self.on_step is not None and step is not None:
            self.on_step(step, scalars)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self.summary.update({k: _plain(v) for k, v in metrics.items()})

    def log_artifact(self, artifact_path, *, name: str | None = None, type: str | None = None):
        pass

    def finish(self) -> None:
        self._out.close()
        trackers = _OPEN.get(self.path, [])
        if self in trackers:
            trackers.remove(self)
        if not trackers:
            _OPEN.pop(self.path, None)


# Trackers not yet finished, by path: a step whose training fails still uploads what was
# logged (`finish_all`).
_OPEN: dict[str, list[JsonlTracker]] = {}


def finish_all(path: str) -> None:
    """Finish (upload and close) every tracker still open on `path`."""
    for tracker in list(_OPEN.get(path, [])):
        try:
            tracker.finish()
        except Exception as exc:  # the training error, if any, is the one to report
            logger.warning("could not finish the metrics of %s: %s", path, exc)


# Step callbacks by metrics path: levanter dumps its whole config with draccus, which cannot
# encode a function, so the config carries only the path.
_ON_STEP: dict[str, Callable[[int, Mapping[str, Any]], None]] = {}


def register_on_step(path: str, on_step: Callable[[int, Mapping[str, Any]], None] | None) -> None:
    if on_step is None:
        _ON_STEP.pop(path, None)
    else:
        _ON_STEP[path] = on_step


@TrackerConfig.register_subclass("lmflows_jsonl")
@dataclasses.dataclass
class JsonlTrackerConfig(TrackerConfig):
    path: str = "metrics.jsonl"
    attempt: str | None = None  # tags every row: which attempt of a resumable step logged it

    def init(self, run_id: str | None) -> JsonlTracker:
        return JsonlTracker(self.path, _ON_STEP.get(self.path), self.attempt)
