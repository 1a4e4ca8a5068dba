"""A small pretraining run with checkpoints every 5 steps, then evaluation (the resume
benchmark and tests/test_train_resume.py)."""

import os

from flows.pretrain import prepare_data
from tasks.core import flow
from tasks.lm.evaluate import evaluate
from tasks.lm.train import train_lm

STEPS = int(os.environ.get("LMFLOWS_BENCH_TRAIN_STEPS", "40"))


@flow
def resume_bench():
    data = prepare_data("kjv-resume", ["data/kjv/kjv-00.jsonl.gz"], vocab_size=512)
    model = train_lm(
        data={"kjv": data["tokenized"]},
        tokenizer=data["tokenizer"],
        name="resume",
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        num_kv_heads=2,
        intermediate_dim=64,
        seq_len=32,
        batch_size=8,
        num_train_steps=STEPS,
        steps_per_eval=1000,
        checkpoint_every=5,
    )
    return evaluate(
        model, data={"kjv": data["tokenized"]}, tokenizer=data["tokenizer"], name="resume"
    )
