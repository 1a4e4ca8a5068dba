"""The reference pretraining pipeline: download -> dedup -> tokenizer -> tokenize -> train ->
evaluate, as plain Python calls of steps. Experiments call `prepare_data` and
`train_and_evaluate` from their own flows (a sweep shares every upstream step)."""

from __future__ import annotations

from tasks.core import StepRef, flow
from tasks.data.dedup import dedup
from tasks.data.download import download_url
from tasks.data.tokenize import tokenize
from tasks.data.train_tokenizer import train_tokenizer
from tasks.lm.evaluate import evaluate
from tasks.lm.train import train_lm

KJV_URLS = [f"data/kjv/kjv-{i:02d}.jsonl.gz" for i in range(4)]
# The CPU-sized model of the demo and the sweep: a 2-layer, 64-wide Llama, 50 steps.
TINY_LLAMA = dict(
    hidden_dim=64,
    num_layers=2,
    num_heads=4,
    num_kv_heads=4,
    intermediate_dim=256,
    seq_len=128,
    batch_size=32,
    num_train_steps=50,
)


def prepare_data(
    name: str,
    urls: list[str],
    *,
    vocab_size: int = 4096,
    dedup_mode: str = "fuzzy",
    validation_fraction: float = 0.05,
    tokenizer: str | StepRef | None = None,
) -> dict[str, StepRef | str]:
    """Download, deduplicate, train a tokenizer (unless one is given) and tokenize."""
    raw = download_url(urls, name=name)
    clean = dedup(raw, name=name, mode=dedup_mode)
    if tokenizer is None:
        tokenizer = train_tokenizer(clean.cd("data"), name=name, vocab_size=vocab_size)
    tokenized = tokenize(
        clean.cd("data"), tokenizer, name=name, validation_fraction=validation_fraction
    )
    return {"raw": raw, "dedup": clean, "tokenizer": tokenizer, "tokenized": tokenized}


def train_and_evaluate(
    name: str, data: dict[str, StepRef], tokenizer: str | StepRef, **train_args: object
) -> dict[str, StepRef]:
    """Train one model on a mixture of tokenized datasets and evaluate it on their
    validation splits."""
    model = train_lm(data=data, tokenizer=tokenizer, name=name, **train_args)
    scores = evaluate(model, data=data, tokenizer=tokenizer, name=name)
    return {"model": model, "eval": scores}


@flow(name="pretrain")
def pretrain(
    name: str = "kjv",
    urls: list[str] = KJV_URLS,
    vocab_size: int = 4096,
    hidden_dim: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_dim: int = 256,
    seq_len: int = 128,
    batch_size: int = 32,
    num_train_steps: int = 50,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> dict:
    """One dataset, one model: the whole pipeline with its main knobs as flow parameters."""
    data = prepare_data(name, urls, vocab_size=vocab_size)
    result = train_and_evaluate(
        name,
        {name: data["tokenized"]},
        data["tokenizer"],
        hidden_dim=hidden_dim,
        num_layers=num_layers,
        num_heads=num_heads,
        num_kv_heads=num_heads,
        intermediate_dim=intermediate_dim,
        seq_len=seq_len,
        batch_size=batch_size,
        num_train_steps=num_train_steps,
        learning_rate=learning_rate,
        seed=seed,
    )
    return {**data, **result}
