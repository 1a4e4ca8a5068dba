"""Scaling laws by isoflop curves (Chinchilla's approach 2) on the King James Bible.

For each compute budget C, every size of a grid of tiny Llamas is trained with `train_lm` on
the D = C / (6 N) tokens the budget allows (whole steps: num_train_steps = round(C / (6 N) /
(batch_size * seq_len))). `analyze_scaling` fits each budget's final validation losses as a
parabola in ln N, and the optima as power laws N_opt(C), D_opt(C); `train_optimal` trains the
grid size nearest to the N_opt predicted for `target_budget`.

N is levanter's total parameter count (`tasks/lm/scaling.py` says why). Every training is an
ordinary cached step named by its budget and size: the data steps are the demo's (the same
`prepare_data` calls), budgets share nothing else, and a run with one more budget trains only
that budget's models (and re-fits). A budget too small to give some size two steps is refused
before anything runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from flows.pretrain import KJV_URLS, prepare_data
from tasks.core import flow
from tasks.lm.scaling import analyze_scaling, budget_label, isoflop_runs, train_optimal
from tasks.lm.train import train_lm


def _llama(hidden: int, layers: int, heads: int, intermediate: int) -> dict[str, int]:
    return dict(
        hidden_dim=hidden,
        num_layers=layers,
        num_heads=heads,
        num_kv_heads=heads,
        intermediate_dim=intermediate,
    )


# name -> architecture; N at vocab 4096, seq_len 128 (levanter's count) in the comment.
SIZES: dict[str, dict[str, int]] = {
    "d16": _llama(16, 1, 2, 64),  # 135k
    "d32": _llama(32, 1, 2, 128),  # 279k
    "d48": _llama(48, 2, 4, 192),  # 467k
    "d64": _llama(64, 2, 4, 256),  # 656k (the demo's model)
    "d96": _llama(96, 2, 4, 384),  # 1.08M
}
# The tiny sweep of tests/test_scaling.py found D_opt ~ 20 N_opt (C ~ 120 N^2), which puts
# these budgets' optima near 160k, 290k and 500k parameters: inside the grid. Not yet run at
# this size: ~27k training steps in all, an hour or two of this machine's 2 CPU cores.
BUDGETS: tuple[float, ...] = (3e12, 1e13, 3e13)
TARGET_BUDGET = 1e14
TRAINING = dict(seq_len=128, batch_size=32, learning_rate=3e-3, seed=0)


def isoflop_sweep(
    name: str,
    urls: Sequence[str],
    budgets: Sequence[float],
    sizes: Mapping[str, Mapping[str, int]],
    target_budget: float,
    *,
    vocab_size: int = 4096,
    validation_fraction: float = 0.05,
    seq_len: int = 128,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    include_extrapolated: bool = False,
) -> dict[str, Any]:
    """The whole sweep (the flow below at full size, the tests at a tiny one): data, one
    train_lm per (budget, size), the analysis, the optimal model."""
    plan = isoflop_runs(
        budgets, sizes, seq_len=seq_len, batch_size=batch_size, vocab_size=vocab_size
    )  # every budget checked before the first step is called
    data = prepare_data(
        "kjv", list(urls), vocab_size=vocab_size, validation_fraction=validation_fraction
    )
    tokenized = {"kjv": data["tokenized"]}
    runs = []
    for row in plan:
        model = train_lm(
            data=tokenized,
            tokenizer=data["tokenizer"],
            name=f"{name}-c{budget_label(row['budget'])}-{row['size']}",
            **sizes[row["size"]],
            seq_len=seq_len,
            batch_size=batch_size,
            num_train_steps=row["num_train_steps"],
            learning_rate=learning_rate,
            seed=seed,
            steps_per_eval=row["num_train_steps"],  # validation after the first and last steps
            max_eval_batches=None,  # the whole validation split: the loss the fit uses
        )
        runs.append({k: row[k] for k in ("budget", "size", "params", "tokens")} | {"model": model})
    analysis = analyze_scaling(runs, name=name, include_extrapolated=include_extrapolated)
    optimal = train_optimal(
        analysis,
        target_budget,
        data=tokenized,
        tokenizer=data["tokenizer"],
        name=f"{name}-c{budget_label(target_budget)}",
        sizes={size: dict(arch) for size, arch in sizes.items()},
        seq_len=seq_len,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )
    return {"data": data, "runs": runs, "analysis": analysis, "optimal": optimal}


@flow(name="isoflop")
def isoflop(
    budgets: tuple[float, ...] = BUDGETS,
    target_budget: float = TARGET_BUDGET,
    sizes: dict[str, dict[str, int]] = SIZES,
) -> dict:
    result = isoflop_sweep("isoflop-kjv", KJV_URLS, budgets, sizes, target_budget, **TRAINING)
    return {"analysis": result["analysis"], "optimal": result["optimal"]}
