"""The demo's seven steps at the test suite's size: the shared tiny model (tests/helpers/tiny.py,
trained once per session) and a harness evaluation of 8 instances."""

from tasks.core import flow
from tasks.lm.harness import harness_eval, harness_tasks
from tests.helpers.tiny import NAME, tiny_base


@flow(name="tiny")
def tiny_experiment() -> dict:
    base = tiny_base()
    harness = harness_eval(
        base["model"],
        base["tokenizer"],
        ["kjv_completion"],
        name=NAME,
        task_folder=harness_tasks(),
        max_eval_instances=8,
    )
    return {"eval": base["eval"], "model": base["model"], "harness": harness}
