"""Task runners for `python -m flows run --runner ...` (docs/design.md §8).

With Ray, each step's whole Prefect task engine runs on a Ray worker: it takes the lease,
writes the output and the commit record there. So workers need the same prefix (shared
storage such as gs:// on a cluster) and a real Prefect API (without one every worker starts
its own temporary server, ~18 s a task); both are passed in the Ray runtime environment.
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path
from typing import Any

from prefect_ray import RayTaskRunner
from prefect_ray.task_runners import PrefectRayFuture

REPO_ROOT = str(Path(__file__).resolve().parent.parent)


_EXTRA_UPSTREAM: contextvars.ContextVar[tuple[Any, ...]] = contextvars.ContextVar(
    "lmflows_ray_upstream", default=()
)


class StepRayTaskRunner(RayTaskRunner):
    """prefect-ray's runner, except that a task's `wait_for` futures are also handed to Ray
    as upstream object refs. prefect-ray passes only futures found in the parameters; a step
    that waits for its producer (lmflows passes StepRefs, not futures) would otherwise occupy
    its worker, and its TPU, while it waits. (Module level: Ray pickles the runner by
    reference, and a class defined in a function would be pickled with the context var.)"""

    def submit(self, task, parameters, wait_for=None, dependencies=None):  # type: ignore[override]
        refs = [f.wrapped_future for f in wait_for or () if isinstance(f, PrefectRayFuture)]
        token = _EXTRA_UPSTREAM.set(tuple(refs))
        try:
            return super().submit(task, parameters, wait_for, dependencies)
        finally:
            _EXTRA_UPSTREAM.reset(token)

    def _exchange_prefect_for_ray_futures(self, kwargs_prefect_futures):  # type: ignore[override]
        parameters, upstream = super()._exchange_prefect_for_ray_futures(kwargs_prefect_futures)
        return parameters, [*upstream, *_EXTRA_UPSTREAM.get()]

    @staticmethod
    def _run_prefect_task(*upstream_ray_obj_refs: Any, **kwargs: Any) -> Any:
        """prefect-ray's remote function, then the task run's events and logs sent before the
        result goes back. Prefect sends task-run states (Cached, Completed...) as events from
        a queue in the worker process; a local Ray ends its workers when the driver exits,
        and a state still queued then never reaches the server (seen in CI: a rerun's two
        `Cached` task runs were missing from the UI)."""
        try:
            return RayTaskRunner._run_prefect_task(*upstream_ray_obj_refs, **kwargs)
        finally:
            send_queued_events()


def send_queued_events(timeout: float = 10.0) -> None:
    """Wait (at most `timeout` seconds each) for this process's queued Prefect events and API
    logs to be sent; the services start again on their next use."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (EventsWorker, APILogWorker):
        service.drain_all(timeout=timeout, at_exit=False)


def ray_task_runner(address: str | None = None, num_cpus: int | None = None) -> Any:
    """A prefect-ray `RayTaskRunner`: a new local Ray (`address=None`) or an existing one."""
    from tasks.core import storage

    # Every lmflows setting (LMFLOWS_*: lease seconds, timeouts, test hooks) follows the
    # steps to the workers, plus what Prefect, W&B and the GCS fakes read.
    env_vars = {k: v for k, v in os.environ.items() if k.startswith("LMFLOWS_")}
    env_vars[storage.PREFIX_ENV] = storage.current_prefix()
    for name in (
        "PREFECT_API_URL",
        "PREFECT_API_AUTH_STRING",
        "WANDB_MODE",
        "STORAGE_EMULATOR_HOST",
        "TENSORSTORE_GCS_HTTP_URL",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING",
    ):
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    env_vars["PYTHONPATH"] = os.pathsep.join(
        filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])
    )
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}}
    if address is None:
        init_kwargs.update(include_dashboard=False, num_cpus=num_cpus or os.cpu_count())
    return StepRayTaskRunner(address=address or "local", init_kwargs=init_kwargs)


def ship_by_value(module_name: str) -> None:
    """Ray workers import a step's module by name; an experiment loaded from a file path
    (`lmflows_experiment_<stem>`, flows.loader) has no importable name there, so its code
    travels with the pickled tasks instead (Ray's cloudpickle and the plain one, which the
    isolated step bodies use)."""
    import sys

    import cloudpickle
    from ray import cloudpickle as ray_cloudpickle

    module = sys.modules[module_name]
    for pickler in (cloudpickle, ray_cloudpickle):
        if module_name not in pickler.list_registry_pickle_by_value():
            pickler.register_pickle_by_value(module)
