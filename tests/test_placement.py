"""Resources per call (never in the identity), `with_resources`, accelerator names, and the
arithmetic behind the Ray placement reports (the cluster behaviour is in tests/test_ray.py)."""

from __future__ import annotations

import pytest

from tasks.core import StepDefinitionError, step
from tasks.core.placement import describe_offer, fits, request_of
from tasks.lm.accelerators import AcceleratorError, ray_resources
from tasks.train import train_lm

TRAIN_ARGS = dict(data={"kjv": "/data/tok"}, tokenizer="/data/tokenizer", name="m")


def _resources_of(task, **overrides):
    params = task.bind((), {**TRAIN_ARGS, **overrides})
    return task.definition.resources_for(params)


def test_train_lm_asks_ray_for_what_its_accelerator_needs_and_keeps_its_identity():
    assert _resources_of(train_lm) == {"num_cpus": 1}
    assert _resources_of(train_lm, accelerator="tpu-v4-8") == {
        "num_cpus": 1,
        "resources": {"TPU": 4, "TPU-v4-8-head": 1},
    }
    assert _resources_of(train_lm, accelerator="gpu:2")["num_gpus"] == 2
    refs = {train_lm.ref_for(**TRAIN_ARGS, accelerator=a) for a in ("cpu", "gpu:1", "tpu-v6e-4")}
    assert len(refs) == 1, "the accelerator must never enter the identity"


@pytest.mark.parametrize("bad", ["tpu-v4-16", "tpu-v9-8", "gpu:0", "cuda", 4])
def test_accelerators_that_cannot_be_placed_are_refused_by_name(bad):
    with pytest.raises(AcceleratorError, match=repr(bad) if isinstance(bad, str) else "4"):
        ray_resources(bad)
    with pytest.raises(ValueError, match="accelerator"):
        train_lm.check_arguments(train_lm.bind((), {**TRAIN_ARGS, "accelerator": bad}))


def test_with_resources_is_a_copy_with_the_same_identity():
    @step(hash_attrs=["n"], name="t/placed", resources={"num_cpus": 2})
    def placed(n: int, *, output_path: str) -> None:
        return None

    bigger = placed.with_resources({"num_cpus": 8, "resources": {"TPU": 4}})
    assert bigger.ref_for(1) == placed.ref_for(1)
    assert bigger.definition.resources_for({"n": 1})["num_cpus"] == 8
    assert placed.definition.resources_for({"n": 1}) == {"num_cpus": 2}  # original unchanged
    assert type(bigger) is type(placed) and bigger.name == placed.name

    def per_call(n: int) -> dict:
        return {"num_cpus": n}

    sized = placed.with_resources(per_call)
    assert sized.definition.resources_for({"n": 3}) == {"num_cpus": 3}


def test_resources_must_be_options_or_a_function_returning_them():
    with pytest.raises(StepDefinitionError, match="resources must be a dict"):

        @step(hash_attrs=["n"], name="t/bad", resources=["TPU"])
        def bad(n: int, *, output_path: str) -> None:
            return None

    def not_a_dict(n: int) -> str:
        return "TPU"

    @step(hash_attrs=["n"], name="t/bad2", resources=not_a_dict)
    def bad2(n: int, *, output_path: str) -> None:
        return None

    with pytest.raises(TypeError, match="resources must be a dict of Ray remote options"):
        bad2.definition.resources_for({"n": 1})


def test_requests_fit_nodes_by_every_resource():
    request = request_of({"num_cpus": 1, "resources": {"TPU": 4, "TPU-v4-8-head": 1}})
    assert request == {"CPU": 1.0, "TPU": 4.0, "TPU-v4-8-head": 1.0}
    assert fits(request, {"CPU": 8, "TPU": 4, "TPU-v4-8-head": 1})
    assert not fits(request, {"CPU": 8, "TPU": 4})
    assert not fits(request, {"CPU": 8, "TPU": 2, "TPU-v4-8-head": 1})
    assert request_of({"num_gpus": 1})["GPU"] == 1.0
    assert request_of({"memory": 2e9})["memory"] == 2e9
    assert not fits(request_of({"memory": 2e9}), {"CPU": 8, "memory": 1e9})
    nodes = [
        {"NodeManagerAddress": "10.0.0.2", "Resources": {"CPU": 2.0, "node:10.0.0.2": 1.0}},
        {"NodeManagerAddress": "10.0.0.3", "Resources": {"CPU": 8.0, "TPU": 4.0}},
    ]
    offer = describe_offer(nodes)
    assert "10.0.0.2 {CPU: 2}" in offer and "10.0.0.3 {CPU: 8, TPU: 4}" in offer
