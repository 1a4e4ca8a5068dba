"""Finding an experiment's flow: a module under `experiments/` or a path to a `.py` file."""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
import sys
from pathlib import Path
from types import ModuleType

from prefect import Flow

EXPERIMENT_FILE_MODULE = "lmflows_experiment_"  # the module name of an experiment file


class ExperimentError(ValueError):
    """An experiment that cannot be loaded; the message is one line for the user."""


def available_experiments() -> list[str]:
    import experiments

    return sorted(
        m.name for m in pkgutil.iter_modules(experiments.__path__) if not m.name.startswith("_")
    )


def load_module(experiment: str) -> ModuleType:
    if experiment.endswith(".py") or "/" in experiment:
        path = Path(experiment)
        if not path.is_file():
            raise ExperimentError(f"experiment file {experiment} does not exist")
        module_name = f"{EXPERIMENT_FILE_MODULE}{path.stem.replace('-', '_')}"
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise ExperimentError(f"cannot import {experiment} as a Python file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            sys.modules.pop(module_name, None)
            raise ExperimentError(_import_failure(experiment, exc)) from exc
        return module
    if not experiment.replace("_", "").replace(".", "").isalnum():
        raise ExperimentError(
            f"{experiment!r} is neither a module name under experiments/ nor a path to a .py file"
        )
    module_name = f"experiments.{experiment}"
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name not in (module_name, "experiments"):
            raise ExperimentError(_import_failure(experiment, exc)) from exc
        names = ", ".join(available_experiments()) or "none"
        raise ExperimentError(f"unknown experiment {experiment!r} (available: {names})") from None
    except Exception as exc:
        raise ExperimentError(_import_failure(experiment, exc)) from exc


def _import_failure(experiment: str, exc: BaseException) -> str:
    """One line: what failed where (the innermost frame in the experiment's own code)."""
    where = ""
    if isinstance(exc, SyntaxError):
        where = f" at {exc.filename}:{exc.lineno}"
        detail = exc.msg
    else:
        import traceback

        frames = traceback.extract_tb(exc.__traceback__)
        if frames:
            where = f" at {frames[-1].filename}:{frames[-1].lineno}"
        detail = " ".join(str(exc).split())[:300]
    return f"experiment {experiment} failed to import{where}: {type(exc).__name__}: {detail}"


def find_flow(module: ModuleType) -> Flow:
    """The one Prefect flow the module defines at module level (imported flows don't count)."""
    flows = [
        value
        for value in vars(module).values()
        if isinstance(value, Flow) and getattr(value.fn, "__module__", None) == module.__name__
    ]
    if len(flows) != 1:
        found = ", ".join(sorted(f.name for f in flows)) or "none"
        raise ExperimentError(
            f"{module.__name__} must define exactly one Prefect flow at module "
            f"level; found {len(flows)} ({found})"
        )
    return flows[0]


def load_flow(experiment: str) -> Flow:
    return find_flow(load_module(experiment))
