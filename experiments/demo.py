"""The README's main job: the whole pipeline on this machine's CPU in a few minutes.

Data: the King James Bible (public domain, `data/kjv/`, see its README), served through the
same download step as any other source. Model: a 2-layer, 64-wide Llama, 50 steps. After the
loss evaluation, lm-evaluation-harness scores the model on the bundled local task
(`data/harness/`: finishing held-out KJV sentences, 4 choices; chance is 0.25), offline.
"""

from __future__ import annotations

from flows.pretrain import KJV_URLS, TINY_LLAMA, prepare_data, train_and_evaluate
from tasks.core import flow
from tasks.lm.harness import harness_eval, harness_tasks

# The demo model's training: experiments/cooldown.py continues from it.
DEMO_TRAINING = dict(learning_rate=3e-3, **TINY_LLAMA)


def demo_model() -> dict:
    """The demo's data steps, its model and the model's evaluation (a flow body)."""
    data = prepare_data("kjv", KJV_URLS, vocab_size=4096)
    result = train_and_evaluate(
        "demo-kjv", {"kjv": data["tokenized"]}, data["tokenizer"], **DEMO_TRAINING
    )
    return {**data, **result}


@flow(name="demo")
def demo() -> dict:
    data = result = demo_model()
    harness = harness_eval(
        result["model"],
        data["tokenizer"],
        ["kjv_completion"],
        name="demo-kjv",
        task_folder=harness_tasks(),
    )
    return {"eval": result["eval"], "model": result["model"], "harness": harness}
