"""evaluate-latest: evaluate the newest committed checkpoint of an experiment (a nightly
deployment). The experiment is planned (identities only), its committed `train_lm` outputs
are found, the newest by commit time is evaluated on its own tokenized datasets (or the named
subset). Evaluating a model the experiment already evaluated on the same data is `Cached`: it
is the same step."""

from __future__ import annotations

import json
from typing import Any

from tasks.core import StepRef, flow, storage
from tasks.core.identity import split_name_with_hash
from tasks.evaluate import evaluate


class NothingToEvaluate(ValueError):
    """The experiment has no committed training output (yet), or unknown datasets."""


def plan_experiment(experiment: str, parameters: dict[str, Any] | None):
    """The experiment's plan with its statuses, its flow parameters bound as a run would."""
    from flows.loader import load_flow
    from flows.params import bind
    from tasks.core import planning

    target = load_flow(experiment)
    # `bind` takes command-line text: JSON, except that str parameters take the text as is.
    raw = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (parameters or {}).items()}
    params = bind(target, raw)
    with planning.planning() as plan:
        target.fn(**params)
    plan.check_status()
    return plan


def committed_at(name_with_hash: str) -> float:
    """When an output was committed (its provenance's end time)."""
    raw = storage.read_bytes(storage.meta_path(name_with_hash, storage.PROVENANCE_FILE))
    return float(json.loads(raw)["ended_at"])


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
        return ref_of(value)
    return value


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
    newest = max(trained, key=lambda item: committed_at(item.ref.name_with_hash))
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
