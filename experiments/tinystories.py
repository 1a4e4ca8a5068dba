"""The seed's tutorial: TinyStories from the HuggingFace hub -> a tiny Llama.

`python -m flows plan tinystories` works offline (identities need no data); `run` needs the
hub. REVISION is the moving branch "main" (download_hf warns about it and records the commit
it resolved to in provenance); set it to that commit to pin the content.
"""

from __future__ import annotations

from flows.pretrain import train_and_evaluate
from tasks.core import flow
from tasks.data.dedup import dedup
from tasks.data.download import download_hf
from tasks.data.formats import text_to_jsonl
from tasks.data.tokenize import tokenize
from tasks.data.train_tokenizer import train_tokenizer

TINYSTORIES = "roneneldan/TinyStories"
REVISION = "main"


@flow(name="tinystories")
def tinystories() -> dict:
    raw = download_hf(
        TINYSTORIES,
        revision=REVISION,
        name="tinystories",
        allow_patterns=["TinyStories-valid.txt", "TinyStories-train.txt"],
    )
    docs = text_to_jsonl(raw, name="tinystories", pattern="TinyStories-*.txt")
    clean = dedup(docs, name="tinystories", mode="exact")
    tokenizer = train_tokenizer(
        clean.cd("data"), name="tinystories", vocab_size=8192, max_documents=200_000
    )
    tokenized = tokenize(clean.cd("data"), tokenizer, name="tinystories", validation_fraction=0.01)
    return train_and_evaluate(
        "tinystories-llama-6m",
        {"tinystories": tokenized},
        tokenizer,
        hidden_dim=256,
        num_layers=4,
        num_heads=8,
        num_kv_heads=8,
        intermediate_dim=1024,
        seq_len=512,
        batch_size=64,
        num_train_steps=2000,
        learning_rate=3e-3,
    )
