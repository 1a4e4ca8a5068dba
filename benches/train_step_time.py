"""Training step time inside the `train_lm` task (a real Prefect flow run) vs levanter's
`train_lm.main` called directly with the same config (goal <= 1.01x). Step time is levanter's
own `throughput/duration`, median over the steps after the first (compilation) ones.

    python -m benches.train_step_time [--steps 40]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from benches.common import isolate_prefect, prefect_server, ratio_line

CORPUS = os.path.join(os.path.dirname(__file__), "..", "data", "kjv")


def hparams() -> dict:
    """The demo's model (flows.pretrain.TINY_LLAMA) with every optimizer argument spelled
    out, since build_train_config takes them all. Imported late: prefect reads its settings
    when first imported, after the benchmark has pointed them at its own server."""
    from flows.pretrain import TINY_LLAMA

    return dict(
        {k: v for k, v in TINY_LLAMA.items() if k != "num_train_steps"},
        learning_rate=3e-3,
        weight_decay=0.1,
        warmup=0.1,
        min_lr_ratio=0.1,
        lr_schedule="cosine",
        beta1=0.9,
        beta2=0.95,
        max_grad_norm=1.0,
        seed=0,
        mixed_precision="f32",
        max_eval_batches=2,
        checkpoint_every=None,
    )


def step_times(metrics_path: str, skip: int = 3) -> list[float]:
    rows = [json.loads(line) for line in open(metrics_path)]
    times = [
        r["throughput/duration"]
        for r in rows
        if r.get("throughput/duration") is not None and (r.get("step") or 0) >= skip
    ]
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    isolate_prefect()
    with prefect_server() as api_url:  # before importing prefect: settings are read at import
        os.environ["PREFECT_API_URL"] = api_url
        run(args.steps)


def run(steps: int) -> None:
    work = tempfile.mkdtemp(prefix="lmflows-bench-train-")
    os.environ["LMFLOWS_PREFIX"] = os.path.join(work, "prefix")
    os.environ.setdefault("WANDB_MODE", "disabled")
    from tasks.data.tokenize import tokenize
    from tasks.data.train_tokenizer import train_tokenizer

    tok = os.path.join(work, "tokenizer")
    cache = os.path.join(work, "cache")
    train_tokenizer.fn.__wrapped__(corpus=CORPUS, vocab_size=4096, output_path=tok)
    tokenize.fn.__wrapped__(dataset=CORPUS, tokenizer=tok, name="bench", output_path=cache)
    common = dict(hparams(), num_train_steps=steps, steps_per_eval=steps)

    import levanter.main.train_lm as levanter_train

    from tasks.lm.train import build_train_config, train_lm

    direct_out = os.path.join(work, "direct")
    plan = build_train_config({"kjv": cache}, tok, direct_out, weights=None, **common)
    levanter_train.main(plan.config)
    plan.checkpointer.wait_until_finished()
    direct = statistics.median(step_times(plan.metrics_path))

    from prefect import flow

    @flow
    def train_flow():
        return train_lm(data={"kjv": cache}, tokenizer=tok, name="bench", **common)

    ref = train_flow()
    in_task = statistics.median(step_times(os.path.join(ref.path, "metrics.jsonl")))
    print(
        f"median step time over {steps} steps: levanter direct {direct * 1000:.1f} ms, "
        f"inside the train_lm task {in_task * 1000:.1f} ms"
    )
    print(ratio_line("step time, task vs direct levanter", in_task, direct, "goal <= 1.01x"))


if __name__ == "__main__":
    main()
