"""A data mixture: one tiny Llama trained on the King James Bible and the Python
documentation (`data/pydoc/`, see its README) in fixed proportions, then evaluated on each
corpus's validation split separately.

One tokenizer serves both corpora, trained on the two together (deduplicated as one corpus):
a vocabulary learned from the Bible alone splits Python code and markup into many short
pieces, so pydoc's per-token loss would measure the tokenizer as much as the model. The
union is ~75% Bible and ~25% pydoc by characters, close to the training mixture. Each corpus
is then deduplicated and tokenized on its own (`prepare_data` with `tokenizer=`), so it keeps
its own validation split and its own evaluation figures. The mixture weights enter only
training (and through the model, evaluation): changing them re-trains, and re-uses every
data step.
"""

from __future__ import annotations

from flows.pretrain import KJV_URLS, TINY_LLAMA, prepare_data, train_and_evaluate
from tasks.core import flow
from tasks.data.dedup import dedup
from tasks.data.download import download_url
from tasks.data.train_tokenizer import train_tokenizer

PYDOC_URLS = [f"data/pydoc/pydoc-{i:02d}.jsonl.gz" for i in range(4)]
# Sampling weights of the training mixture (levanter's `train_weights`, normalised by it).
WEIGHTS = {"kjv": 0.7, "pydoc": 0.3}
VOCAB_SIZE = 4096


def mixture_tokenizer(urls: list[str], vocab_size: int):
    """A BPE trained on every corpus of the mixture, deduplicated together."""
    raw = download_url(urls, name="kjv-pydoc")
    clean = dedup(raw, name="kjv-pydoc")
    return train_tokenizer(clean.cd("data"), name="kjv-pydoc", vocab_size=vocab_size)


def kjv_pydoc(
    name: str,
    weights: dict[str, float],
    kjv_urls: list[str] = KJV_URLS,
    pydoc_urls: list[str] = PYDOC_URLS,
    vocab_size: int = VOCAB_SIZE,
    **train_args: object,
) -> dict:
    """The whole mixture pipeline (the flow below at full size; the tests at a tiny one)."""
    tokenizer = mixture_tokenizer(kjv_urls + pydoc_urls, vocab_size)
    kjv = prepare_data("kjv", kjv_urls, tokenizer=tokenizer)
    pydoc = prepare_data("pydoc", pydoc_urls, tokenizer=tokenizer)
    data = {"kjv": kjv["tokenized"], "pydoc": pydoc["tokenized"]}
    result = train_and_evaluate(name, data, tokenizer, weights=dict(weights), **train_args)
    return {**result, "tokenizer": tokenizer, "data": data}


@flow(name="mixture")
def mixture(weights: dict[str, float] = WEIGHTS) -> dict:
    result = kjv_pydoc("mixture-kjv-pydoc", weights, learning_rate=3e-3, **TINY_LLAMA)
    return {"eval": result["eval"], "model": result["model"]}
