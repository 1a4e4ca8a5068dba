"""A levanter tracker that writes metrics as JSON lines and reports progress to Prefect.

levanter's trainer logs every metric through its tracker; writing them to a file inside the
step's output (instead of W&B) keeps training offline and leaves the curve with the model.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from levanter.tracker import Tracker, TrackerConfig


def _plain(value: Any) -> Any:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else None


class JsonlTracker(Tracker):
    name: str = "lmflows_jsonl"

    def __init__(self, path: str, on_step: Callable[[int, Mapping[str, Any]], None] | None):
        self.path = path
        self.on_step = on_step
        self._file = open(path, "a")  # noqa: SIM115 - closed in finish()
        self.summary: dict[str, Any] = {}

    def log_hyperparameters(self, hparams: dict[str, Any]) -> None:
        pass  # the step's provenance already records every hash attribute

    def log(self, metrics: Mapping[str, Any], *, step: int | None, commit: bool | None = None):
        scalars = {
            k: _plain(v)
            for k, v in metrics.items()
            if not hasattr(v, "shape") or getattr(v, "size", 1) == 1
        }
        self._file.write(json.dumps({"step": step, **scalars}) + "\n")
        self._file.flush()
        if self.on_step is not None and step is not None:
            self.on_step(step, scalars)

    def log_summary(self, metrics: dict[str, Any]) -> None:
        self.summary.update({k: _plain(v) for k, v in metrics.items()})

    def log_artifact(self, artifact_path, *, name: str | None = None, type: str | None = None):
        pass

    def finish(self) -> None:
        if not self._file.closed:
            self._file.close()


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

    def init(self, run_id: str | None) -> JsonlTracker:
        return JsonlTracker(self.path, _ON_STEP.get(self.path))
