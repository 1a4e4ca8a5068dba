"""The tiny KJV model that the model tests share: one flow body, trained once per test session
through lmflows' own cache (tests/conftest.py `tiny_lm`), then `Cached` for every test that
composes it into its own flow. A test that needs a fresh training says why."""

from __future__ import annotations

KJV_URLS = ["data/kjv/kjv-00.jsonl.gz"]  # relative: resolved against the checkout
VOCAB_SIZE = 512
NAME = "tiny"
TINY = dict(
    hidden_dim=32,
    num_layers=1,
    num_heads=2,
    num_kv_heads=2,
    intermediate_dim=64,
    seq_len=128,
    batch_size=8,
    num_train_steps=6,
    learning_rate=1e-2,
    weight_decay=0.05,  # not the default: tests/test_audit_bugs.py checks it reaches levanter
    steps_per_eval=100,
    max_eval_batches=2,
)


def tiny_base() -> dict:
    """Download, dedup, tokenizer, tokenize, train 6 steps, evaluate: a flow body."""
    from flows.pretrain import prepare_data, train_and_evaluate

    data = prepare_data("kjv", KJV_URLS, vocab_size=VOCAB_SIZE)
    trained = train_and_evaluate(NAME, {"kjv": data["tokenized"]}, data["tokenizer"], **TINY)
    return {**data, **trained}
