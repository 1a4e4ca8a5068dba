"""A cooldown: the demo's model (experiments/demo.py) trained 30 more steps at a rate that
decays linearly to zero, on a mixture of the Bible it was trained on and the Python
documentation, then evaluated on both.

The training starts from the demo model's final levanter checkpoint (`initialize_from`; its
identity, not its path, is part of this training's identity) at step 0 of its own schedule,
so its loss starts where the demo's ended, not at ln(4096) ~ 8.3. The optimizer state starts
fresh (`initialize_optimizer=False`): the demo's Adam moments belong to a rate already decayed
by its cosine. Every corpus is tokenized with the demo's tokenizer: a model is only ever
continued with the tokenizer it was trained with (train_lm refuses another).
"""

from __future__ import annotations

from typing import Any

from experiments.demo import demo_model
from experiments.mixture import PYDOC_URLS
from flows.pretrain import TINY_LLAMA, prepare_data
from tasks.core import StepRef, flow
from tasks.lm.evaluate import evaluate
from tasks.lm.train import train_lm

# Mostly the corpus the model knows, some new text: what a cooldown's mixture looks like.
WEIGHTS = {"kjv": 0.8, "pydoc": 0.2}
COOLDOWN = dict(
    num_train_steps=30, learning_rate=1e-3, lr_schedule="linear", warmup=0.0, min_lr_ratio=0.0
)
SHAPE = {key: value for key, value in TINY_LLAMA.items() if key != "num_train_steps"}


def cool_down(
    name: str,
    source: StepRef,
    tokenizer: StepRef,
    data: dict[str, StepRef],
    weights: dict[str, float],
    **train_args: Any,
) -> StepRef:
    """`source`'s weights trained on `data` at a decaying rate (COOLDOWN unless overridden)."""
    arguments = {**COOLDOWN, **train_args}
    return train_lm(
        data=data,
        tokenizer=tokenizer,
        name=name,
        weights=dict(weights),
        initialize_from=source,
        **arguments,
    )


@flow(name="cooldown")
def cooldown(weights: dict[str, float] = WEIGHTS) -> dict:
    demo = demo_model()
    pydoc = prepare_data("pydoc", PYDOC_URLS, tokenizer=demo["tokenizer"])
    data = {"kjv": demo["tokenized"], "pydoc": pydoc["tokenized"]}
    model = cool_down(
        "cooldown-kjv-pydoc", demo["model"], demo["tokenizer"], data, weights, **SHAPE
    )
    scores = evaluate(model, data=data, tokenizer=demo["tokenizer"], name="cooldown-kjv-pydoc")
    return {"model": model, "eval": scores, "source": demo["model"]}
