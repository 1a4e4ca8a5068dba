"""Task runners for `python -m flows run --runner ...` (docs/design.md §8).

With Ray, each step's whole Prefect task engine runs on a Ray worker: it takes the lease,
writes the output and the commit record there. So workers need the same prefix (shared
storage such as gs:// on a cluster) and a real Prefect API (without one every worker starts
its own temporary server, ~18 s a task); both are passed in the Ray runtime environment.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

REPO_ROOT = str(Path(__file__).resolve().parent.parent)


def ray_task_runner(address: str | None = None, num_cpus: int | None = None) -> Any:
    """A prefect-ray `RayTaskRunner`: a new local Ray (`address=None`) or an existing one."""
    from prefect_ray import RayTaskRunner

    from tasks.core import storage

    env_vars = {storage.PREFIX_ENV: storage.current_prefix()}
    for name in (
        "PREFECT_API_URL",
        "PREFECT_API_AUTH_STRING",
        "WANDB_MODE",
        "STORAGE_EMULATOR_HOST",
        "LMFLOWS_LEASE_SECONDS",
    ):
        if os.environ.get(name):
            env_vars[name] = os.environ[name]
    env_vars["PYTHONPATH"] = os.pathsep.join(
        filter(None, [REPO_ROOT, os.environ.get("PYTHONPATH")])
    )
    init_kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}}
    if address is None:
        init_kwargs.update(include_dashboard=False, num_cpus=num_cpus or os.cpu_count())
    return RayTaskRunner(address=address or "local", init_kwargs=init_kwargs)
