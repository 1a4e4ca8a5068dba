"""Three learning rates sharing every upstream step: a second sweep point costs only its
training and evaluation. Each call passes its value explicitly (no closures over the loop)."""

from __future__ import annotations

from flows.pretrain import KJV_URLS, TINY_LLAMA, prepare_data, train_and_evaluate
from tasks.core import flow

LEARNING_RATES = (1e-3, 3e-3, 1e-2)


@flow(name="lr-sweep")
def lr_sweep(learning_rates: tuple[float, ...] = LEARNING_RATES) -> dict:
    data = prepare_data("kjv", KJV_URLS, vocab_size=4096)
    results = {}
    for learning_rate in learning_rates:
        results[learning_rate] = train_and_evaluate(
            f"sweep-kjv-lr{learning_rate:g}",
            {"kjv": data["tokenized"]},
            data["tokenizer"],
            learning_rate=learning_rate,
            **TINY_LLAMA,
        )
    return results
