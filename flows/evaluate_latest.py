"""evaluate-latest: evaluate the newest committed checkpoint of an experiment (a nightly
deployment). The experiment is planned (identities only), its committed `train_lm` outputs
are found, the newest by commit time is evaluated on its own tokenized datasets (or the named
subset). Evaluating a model the experiment already evaluated on the same data is `Cached`: it
is the same step."""

from __future__ import annotations

import json
from typing import Any

from tasks.core import StepRef, flow, storage
from tasks.core.adopt import read_in_place
from tasks.core.identity import split_name_with_hash
from tasks.lm.evaluate import evaluate


class NothingToEvaluate(ValueError):
    """The experiment has no committed training output (yet), or unknown datasets."""


# Packages whose modules a deployment parameter may name (`flows.pretrain`).
IMPORTABLE = ("experiments.", "flows.")


def load_experiment(experiment: str):
    """The flow an `experiment` parameter names: a module under `experiments/` (`demo`) or a
    dotted module of this repository's flows (`flows.pretrain`). Never a file path: a
    parameter anyone may set when triggering a deployment must not import arbitrary code on
    the worker."""
    import importlib

    from flows.loader import ExperimentError, find_flow, load_flow

    if "/" in experiment or "\\" in experiment or experiment.endswith(".py"):
        raise NothingToEvaluate(
            f"experiment {experiment!r}: name a module under experiments/ (e.g. 'demo') or "
            "'flows.pretrain', not a file path"
        )
    if "." not in experiment:
        return load_flow(experiment)
    if not experiment.startswith(IMPORTABLE):
        raise NothingToEvaluate(
            f"experiment {experiment!r}: only modules of {', '.join(IMPORTABLE)} can be named"
        )
    try:
        module = importlib.import_module(experiment)
    except ImportError as exc:
        raise ExperimentError(f"experiment {experiment}: {exc}") from exc
    return find_flow(module)


def plan_experiment(experiment: str, parameters: dict[str, Any] | None):
    """The experiment's plan with its statuses, its flow parameters bound as a run would."""
    from flows.planned import PlanningFailed, plan_experiment

    target = load_experiment(experiment)
    # `bind` takes command-line text: JSON, except that str parameters take the text as is.
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (parameters or {}).items()}
    try:
        _, plan = plan_experiment(target, raw)
    except PlanningFailed as failed:
        raise failed.__cause__ from None  # the body's own error, as a run would raise it
    plan.check_status()
    return plan


def committed_at(name_with_hash: str) -> float | None:
    """When an output was committed (its provenance's end time); None if that record is
    missing or damaged (the output is then skipped, with a warning)."""
    import logging
    import math

    path = storage.meta_path(name_with_hash, storage.PROVENANCE_FILE)
    try:
        when = float(json.loads(storage.read_bytes(path))["ended_at"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logging.getLogger("lmflows.evaluate_latest").warning(
            "skipping %s: its provenance %s is unreadable (%s)", name_with_hash, path, exc
        )
        return None
    return when if math.isfinite(when) else None


def ref_of(identity: str) -> StepRef:
    """The StepRef an identity string in a plan's attributes names (``NAME-HASH[/sub]``)."""
    parts = identity.split("/")
    for cut in range(len(parts), 0, -1):
        head = "/".join(parts[:cut])
        try:
            name, hash_ = split_name_with_hash(head)
        except ValueError:
            continue
        return StepRef(name, hash_, "/".join(parts[cut:]))
    raise ValueError(f"{identity!r} names no step output")


def _input(value: Any, deps: list[str]) -> Any:
    """An attribute value as the step received it: a StepRef where it named a dependency."""
    if isinstance(value, str) and any(value == d or value.startswith(d + "/") for d in deps):
        return read_in_place(ref_of(value))  # an adopted input: the folder itself
    return value


def newest_committed(experiment: str, trained: list[Any]) -> Any:
    """The planned step committed last (by its provenance); outputs whose provenance is
    unreadable are skipped (a planted record can only choose among the experiment's own
    committed models)."""
    dated = [(committed_at(item.ref.name_with_hash), item) for item in trained]
    dated = [(when, item) for when, item in dated if when is not None]
    if not dated:
        raise NothingToEvaluate(
            f"experiment {experiment}: the committed training outputs "
            f"{', '.join(i.ref.name_with_hash for i in trained)} have no readable provenance "
            "(run `python -m flows verify`)"
        )
    return max(dated, key=_first)[1]


def _first(pair: tuple[float, Any]) -> float:
    return pair[0]


@flow(name="evaluate-latest")
def evaluate_latest(
    experiment: str = "demo",
    datasets: list[str] | None = None,
    parameters: dict[str, Any] | None = None,
) -> dict:
    """Evaluate the newest committed `train_lm` output of `experiment` (planned with
    `parameters`) on `datasets` (names of its training data; default: all of them)."""
    plan = plan_experiment(experiment, parameters)
    trained = [
        item
        for item in plan.steps.values()
        if item.task_name == "train_lm" and item.status == "committed"
    ]
    if not trained:
        planned = [i.ref.name_with_hash for i in plan.steps.values() if i.task_name == "train_lm"]
        raise NothingToEvaluate(
            f"experiment {experiment}: no committed training output yet (planned: "
            f"{', '.join(planned) or 'none'})"
        )
    newest = newest_committed(experiment, trained)
    data = {key: _input(value, newest.deps) for key, value in newest.attrs["data"].items()}
    if datasets:
        unknown = sorted(set(datasets) - set(data))
        if unknown:
            raise NothingToEvaluate(
                f"datasets {unknown} are not among {newest.ref.name_with_hash}'s training data "
                f"{sorted(data)}"
            )
        data = {key: data[key] for key in datasets}
    tokenizer = _input(newest.attrs["tokenizer"], newest.deps)
    name = newest.ref.name.split("/", 1)[-1]
    scores = evaluate(newest.ref, data=data, tokenizer=tokenizer, name=name)
    return {"model": newest.ref.name_with_hash, "eval": scores}
