"""Scaling laws from an isoflop sweep: `analyze_scaling` and `train_optimal`.

An isoflop sweep trains, for each compute budget C, several model sizes N on the D = C / (6 N)
tokens the budget allows (`isoflop_runs` plans them; `experiments/isoflop.py` trains them with
`train_lm`). `analyze_scaling` fits each budget's final validation losses as a parabola in
ln N, takes its vertex as the budget's optimum and fits N_opt(C) and D_opt(C) as power laws
(`tasks.lm.scaling_fit`, numpy), writing `analysis.json` and `scaling.png`. `train_optimal`
reads that analysis and trains, with `train_lm`'s own implementation, the grid size nearest to
the N_opt predicted for a target budget.

N is the total trainable parameter count as levanter counts it from the model config
(`LlamaConfig.total_trainable_params`: input embeddings, the untied output projection, every
layer and norm). At these sizes the embeddings are most of the model, and the output
projection costs as much compute per token as any layer, so leaving them out would not
describe where the compute goes; it is also Chinchilla's convention. C = 6 N D is the usual
approximation, not a FLOP count (the attention term is left out).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import fsspec

from tasks.core import step
from tasks.lm import accelerators
from tasks.lm import scaling_fit as fit
from tasks.lm.model import ARCH_ATTRS, model_shape
from tasks.lm.scaling_plot import ANALYSIS_FILE, PLOT_FILE, plot_scaling, publish_scaling

logger = logging.getLogger("lmflows.scaling")

OPTIMAL_FILE = "optimal.json"
# The keys of one size of the grid: train_lm's model arguments except seq_len, which is
# shared by the whole sweep.
ARCH_KEYS = ARCH_ATTRS
MIN_STEPS = 2  # train_lm's minimum (levanter saves no checkpoint at step 0)


# --- planning a sweep (plain numbers, known before anything runs) --------------------------


def params_of(architecture: Mapping[str, int], seq_len: int, vocab_size: int) -> int:
    """N of a Llama of this shape: levanter's own count from the config (see the module
    docstring for why it is the total)."""
    from levanter.models.llama import LlamaConfig

    config = LlamaConfig(seq_len=seq_len, **{k: architecture[k] for k in ARCH_KEYS})
    return int(config.total_trainable_params(vocab_size))


def check_sizes(sizes: Any) -> None:
    """A size grid is a non-empty mapping of size names to the five architecture keys."""
    if not isinstance(sizes, Mapping) or not sizes:
        raise ValueError(f"sizes={sizes!r}: expected a non-empty mapping of name -> architecture")
    for label, arch in sizes.items():
        if not isinstance(arch, Mapping) or set(arch) != set(ARCH_KEYS):
            raise ValueError(
                f"sizes[{label!r}]={arch!r}: an architecture has exactly the keys {list(ARCH_KEYS)}"
            )
        bad = {k: v for k, v in arch.items() if not isinstance(v, int) or isinstance(v, bool)}
        if bad or min(arch.values()) < 1:
            raise ValueError(f"sizes[{label!r}]: every value must be a positive integer: {arch}")
        if arch["hidden_dim"] % arch["num_heads"] or arch["num_heads"] % arch["num_kv_heads"]:
            raise ValueError(
                f"sizes[{label!r}]: hidden_dim must be a multiple of num_heads, and num_heads "
                f"of num_kv_heads: {arch}"
            )


def check_budget(label: str, budget: Any) -> float:
    if isinstance(budget, bool) or not isinstance(budget, (int, float)):
        raise ValueError(f"{label}={budget!r} must be a number of FLOPs")
    if not (math.isfinite(budget) and budget > 0):
        raise ValueError(f"{label}={budget!r} must be a finite positive number of FLOPs")
    return float(budget)


def budget_label(budget: float) -> str:
    """`3e+12` -> `3e12`, `1.5e+11` -> `1.5e11`: a budget as it may appear in a step name."""
    return f"{budget:.3g}".replace("+", "")


def isoflop_runs(
    budgets: Sequence[float],
    sizes: Mapping[str, Mapping[str, int]],
    *,
    seq_len: int,
    batch_size: int,
    vocab_size: int,
) -> list[dict[str, Any]]:
    """One row per (budget, size): params N, num_train_steps = round(C / (6 N) / (batch_size *
    seq_len)) and the tokens they give. Refuses, before anything runs, a combination with fewer
    than two steps (naming it and the smallest budget that would do) and budgets that appear
    twice."""
    check_sizes(sizes)
    values = [check_budget("budgets[]", b) for b in budgets]
    if len(set(values)) != len(values):
        raise ValueError(f"budgets={list(budgets)!r} lists a budget more than once")
    tokens_per_step = batch_size * seq_len
    rows = []
    for budget in values:
        for size, arch in sizes.items():
            params = params_of(arch, seq_len, vocab_size)
            steps = fit.train_steps(budget, params, tokens_per_step)
            if steps < MIN_STEPS:
                smallest = fit.FLOPS_PER_PARAM_TOKEN * params * tokens_per_step * 1.5
                raise ValueError(
                    f"budget {budget:g} with size {size!r} (N={params:,}) gives {steps} train "
                    f"step(s) of {tokens_per_step} tokens; train_lm needs at least {MIN_STEPS}: "
                    f"use a budget of at least {smallest:.3g} or a smaller model"
                )
            rows.append(
                {
                    "budget": budget,
                    "size": size,
                    "params": params,
                    "num_train_steps": steps,
                    "tokens": steps * tokens_per_step,
                }
            )
    return rows


# --- analyze_scaling ----------------------------------------------------------------------

RUN_KEYS = {"budget", "params", "tokens", "model"}


def _check_analysis(
    runs: Any, include_extrapolated: Any = False, loss_key: Any = "eval/loss", **_: Any
) -> None:
    if not isinstance(runs, (list, tuple)) or not runs:
        raise ValueError("runs must be a non-empty list of {budget, params, tokens, model} dicts")
    by_budget: dict[float, list[float]] = {}
    for i, run in enumerate(runs):
        if not isinstance(run, Mapping) or not RUN_KEYS <= set(run):
            raise ValueError(f"runs[{i}] must be a dict with keys {sorted(RUN_KEYS)}, got {run!r}")
        budget = check_budget(f"runs[{i}].budget", run["budget"])
        for key in ("params", "tokens"):
            value = run[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"runs[{i}].{key}={value!r} must be a positive integer")
        if run["params"] in by_budget.setdefault(budget, []):
            raise ValueError(f"runs[{i}]: budget {budget:g} has size N={run['params']} twice")
        by_budget[budget].append(run["params"])
    if len(by_budget) < fit.MIN_BUDGETS:
        raise ValueError(
            f"runs cover {len(by_budget)} budget(s) {sorted(by_budget)}; the power laws need at "
            f"least {fit.MIN_BUDGETS}"
        )
    few = {f"{b:g}": len(n) for b, n in by_budget.items() if len(n) < fit.MIN_SIZES}
    if few:
        raise ValueError(
            f"budgets {few} have fewer than {fit.MIN_SIZES} model sizes; a parabola per budget "
            f"needs at least {fit.MIN_SIZES}"
        )
    if not isinstance(include_extrapolated, bool):
        raise ValueError(f"include_extrapolated={include_extrapolated!r} must be True or False")
    if not isinstance(loss_key, str) or not loss_key:
        raise ValueError(f"loss_key={loss_key!r} must be a metric name such as 'eval/loss'")


def _read_json(url: str) -> Any:
    with fsspec.open(url, "r") as handle:
        return json.load(handle)


def _relative_to_prefix(path: str) -> str:
    """An input's location without the prefix (`checkpoints/NAME-HASH`): what the analysis
    records, so it stays true in a copied bucket."""
    from tasks.core import current_prefix

    prefix = current_prefix().rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else path.rstrip("/").rsplit("/", 1)[-1]


def read_run(run: Mapping[str, Any], loss_key: str) -> dict[str, Any]:
    """One run's final loss and shape from its train_lm output, checked against the N the
    sweep planned with (a tokenizer smaller than the vocab_size asked for changes N)."""
    from tasks.lm.report import final_metrics, read_metrics

    model = str(run["model"]).rstrip("/")
    trained = _read_json(f"{model}/train_config.json")
    final = final_metrics(read_metrics(f"{model}/metrics.jsonl"))
    if loss_key not in final:
        raise ValueError(
            f"{model}: no {loss_key!r} in its metrics ({sorted(final)}); the analysis needs "
            "train_lm's final loss on the whole validation split (max_eval_batches=None)"
        )
    arch = trained["model"]
    params = params_of(arch, arch["seq_len"], trained["vocab_size"])
    if params != run["params"]:
        raise ValueError(
            f"{model}: the sweep planned N={run['params']:,} but the trained model has "
            f"N={params:,} (vocab_size {trained['vocab_size']}): plan with the tokenizer's "
            "real vocabulary size"
        )
    return {
        "budget": float(run["budget"]),
        "size": run.get("size"),
        "params": params,
        "tokens": int(run["tokens"]),
        "compute": fit.FLOPS_PER_PARAM_TOKEN * params * int(run["tokens"]),
        "loss": float(final[loss_key]),
        "final_step": final.get("step"),
        "architecture": model_shape(arch),
        "vocab_size": int(trained["vocab_size"]),
        "model": _relative_to_prefix(model),
    }


def analyze(
    points: Sequence[Mapping[str, Any]], include_extrapolated: bool = False
) -> dict[str, Any]:
    """Per-budget parabolas and optima and the frontier, from runs read by `read_run`. A
    frontier that cannot be fitted is recorded as None with the reason."""
    budgets = sorted({p["budget"] for p in points})
    fits = []
    for budget in budgets:
        mine = sorted((p for p in points if p["budget"] == budget), key=lambda p: p["params"])
        fitted = fit.fit_isoflop(budget, [p["params"] for p in mine], [p["loss"] for p in mine])
        fitted["sizes"] = [p["size"] for p in mine]
        fitted["params"] = [p["params"] for p in mine]
        fitted["losses"] = [p["loss"] for p in mine]
        fitted["best_sampled"] = mine[min(range(len(mine)), key=lambda i: mine[i]["loss"])]["size"]
        fits.append(fitted)
    try:
        frontier, error = fit.fit_frontier(fits, include_extrapolated), None
    except fit.ScalingFitError as exc:
        frontier, error = None, str(exc)
    return {"budgets": fits, "frontier": frontier, "frontier_error": error}


@step(
    hash_attrs=["runs", "include_extrapolated", "loss_key"],
    operational=[],
    name="scaling/{name}",
    validate=_check_analysis,
    isolate=True,
)
def analyze_scaling(
    runs: list[dict],
    name: str,
    include_extrapolated: bool = False,
    loss_key: str = "eval/loss",
    *,
    output_path: str,
) -> dict:
    """Fit an isoflop sweep: `runs` is one dict per trained model, {"budget": C, "params": N,
    "tokens": D, "model": train_lm output, "size": optional label}. At least three sizes per
    budget and two budgets. Optima outside their budget's sampled sizes are flagged and left
    out of the power laws unless `include_extrapolated`."""
    points = [read_run(run, loss_key) for run in runs]
    vocab = sorted({p["vocab_size"] for p in points})
    seq = sorted({p["architecture"]["seq_len"] for p in points})
    if len(vocab) > 1 or len(seq) > 1:
        raise ValueError(f"runs mix vocabularies {vocab} or sequence lengths {seq}")
    result = analyze(points, include_extrapolated)
    analysis = {
        "format": 1,
        "conventions": {
            "params": "total trainable parameters, levanter LlamaConfig.total_trainable_params",
            "compute": "C = 6 N D",
            "parabola": "loss = c2 x^2 + c1 x + c0 with x = ln N; coefficients [c2, c1, c0]",
            "power_law": "y = coefficient * C ** exponent",
        },
        "loss_key": loss_key,
        "include_extrapolated": include_extrapolated,
        "vocab_size": vocab[0],
        "seq_len": seq[0],
        "runs": points,
        **result,
    }
    picture = plot_scaling(analysis, name)
    base = output_path.rstrip("/")
    with fsspec.open(f"{base}/{ANALYSIS_FILE}", "w") as handle:
        json.dump(analysis, handle, indent=2)
    with fsspec.open(f"{base}/{PLOT_FILE}", "wb") as handle:
        handle.write(picture)
    publish_scaling(picture, analysis, name, output_path)
    frontier = result["frontier"]
    return {
        "analysis": ANALYSIS_FILE,
        "plot": PLOT_FILE,
        "frontier": None if frontier is None else {k: frontier[k] for k in ("params", "tokens")},
        "frontier_error": result["frontier_error"],
        "optima": [
            {k: b[k] for k in ("budget", "status", "params_opt", "tokens_opt")}
            for b in result["budgets"]
        ],
    }


# --- train_optimal ------------------------------------------------------------------------


def _check_optimal(
    target_budget: Any,
    sizes: Any,
    data: Any,
    seq_len: Any,
    batch_size: Any,
    learning_rate: Any,
    accelerator: Any = "cpu",
    **_: Any,
) -> None:
    from tasks.lm.train import train_lm

    check_budget("target_budget", target_budget)
    check_sizes(sizes)
    for arch in sizes.values():  # train_lm's own checks, for every size it may train
        train_lm.definition.check(
            _train_lm_arguments(
                data=data,
                tokenizer="",
                name="",
                **arch,
                seq_len=seq_len,
                batch_size=batch_size,
                num_train_steps=MIN_STEPS,
                learning_rate=learning_rate,
                accelerator=accelerator,
            )
        )


def _train_lm_arguments(**arguments: Any) -> dict[str, Any]:
    """`arguments` bound to train_lm's parameters with its defaults applied: what its checks
    and its body receive when it is called as a step."""
    from tasks.lm.train import train_lm

    bound = train_lm.definition.signature.bind(**arguments)
    bound.apply_defaults()
    return dict(bound.arguments)


def choose(
    analysis: Mapping[str, Any],
    target_budget: float,
    sizes: Mapping[str, Mapping[str, int]],
    *,
    seq_len: int,
    batch_size: int,
) -> dict[str, Any]:
    """What `train_optimal` trains: the frontier's N_opt and D_opt at the target budget, and the
    grid size nearest to N_opt on a log scale, trained on the tokens that spend the budget
    (C / (6 N), rounded to whole steps; not D_opt, which belongs to N_opt)."""
    frontier = analysis.get("frontier")
    if not frontier:
        raise ValueError(
            f"the analysis has no compute-optimal frontier ({analysis.get('frontier_error')}); "
            "add budgets or sizes around the optima, or analyse with include_extrapolated=True"
        )
    if seq_len != analysis["seq_len"]:
        raise ValueError(f"seq_len={seq_len}, but the analysis was fitted at {analysis['seq_len']}")
    vocab = analysis["vocab_size"]
    candidates = {size: params_of(arch, seq_len, vocab) for size, arch in sizes.items()}
    params_opt = float(fit.power_law(frontier["params"], target_budget))
    tokens_opt = float(fit.power_law(frontier["tokens"], target_budget))
    size = fit.nearest_size(candidates, params_opt)
    steps = fit.train_steps(target_budget, candidates[size], batch_size * seq_len)
    if steps < MIN_STEPS:
        raise ValueError(
            f"target_budget={target_budget:g} gives size {size!r} (N={candidates[size]:,}) "
            f"{steps} train step(s); train_lm needs at least {MIN_STEPS}"
        )
    tokens = steps * batch_size * seq_len
    fitted = frontier["budgets"]
    return {
        "target_budget": target_budget,
        "predicted": {"params": params_opt, "tokens": tokens_opt},
        "within_fitted_budgets": min(fitted) <= target_budget <= max(fitted),
        "rule": "nearest grid size to N_opt in log N; tokens = C / (6 N) in whole steps",
        "candidates": candidates,
        "chosen": {
            "size": size,
            "architecture": {**sizes[size], "seq_len": seq_len},
            "params": candidates[size],
            "num_train_steps": steps,
            "tokens": tokens,
            "compute": fit.FLOPS_PER_PARAM_TOKEN * candidates[size] * tokens,
        },
    }


@step(
    hash_attrs=[
        "analysis",
        "target_budget",
        "data",
        "tokenizer",
        "sizes",
        "seq_len",
        "batch_size",
        "learning_rate",
        "seed",
    ],
    operational=["steps_per_eval", "max_eval_batches", "checkpoint_every", "accelerator"],
    name="optimal/{name}",
    validate=_check_optimal,
    resources=accelerators.ray_options,
    resumable=True,  # it is train_lm inside: an attempt resumes from the newest checkpoint
    isolate=True,
)
def train_optimal(
    analysis: str,
    target_budget: float,
    data: dict,
    tokenizer: str,
    name: str,
    sizes: dict,
    seq_len: int = 128,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    seed: int = 0,
    steps_per_eval: int = 1000,
    max_eval_batches: int | None = None,
    checkpoint_every: int | None = None,
    accelerator: str = "cpu",
    *,
    output_path: str,
) -> dict:
    """Train the compute-optimal model that `analysis` (an `analyze_scaling` output) predicts
    for `target_budget` FLOPs, choosing among `sizes` (name -> architecture). The output is a
    train_lm output (checkpoints, HF export, metrics: `evaluate` takes it) plus `optimal.json`
    with the prediction and the chosen configuration."""
    from tasks.data.tokenizer_files import load_tokenizer
    from tasks.lm.train import train_lm

    fitted = _read_json(f"{analysis.rstrip('/')}/{ANALYSIS_FILE}")
    vocab = len(load_tokenizer(tokenizer))
    if vocab != fitted["vocab_size"]:
        raise ValueError(
            f"the tokenizer has {vocab} tokens but the analysis counted N with "
            f"{fitted['vocab_size']}: use the sweep's tokenizer"
        )
    choice = choose(fitted, target_budget, sizes, seq_len=seq_len, batch_size=batch_size)
    choice["analysis"] = _relative_to_prefix(analysis)
    chosen = choice["chosen"]
    logger.info(
        "target %g FLOPs: N_opt %.3g -> size %s (N=%d), %d steps",
        target_budget,
        choice["predicted"]["params"],
        chosen["size"],
        chosen["params"],
        chosen["num_train_steps"],
    )
    arguments = _train_lm_arguments(
        data=data,
        tokenizer=tokenizer,
        name=name,
        **sizes[chosen["size"]],
        seq_len=seq_len,
        batch_size=batch_size,
        num_train_steps=chosen["num_train_steps"],
        learning_rate=learning_rate,
        seed=seed,
        steps_per_eval=steps_per_eval,
        max_eval_batches=max_eval_batches,
        checkpoint_every=checkpoint_every,
        accelerator=accelerator,
    )
    # train_lm's own implementation (its checks, then its body) writing into this output:
    # one training code path, and the output has train_lm's layout.
    train_lm.definition.check(arguments)
    trained = train_lm.definition.fn(**arguments, output_path=output_path)
    with fsspec.open(f"{output_path.rstrip('/')}/{OPTIMAL_FILE}", "w") as handle:
        json.dump(choice, handle, indent=2)
    return {**trained, "optimal": OPTIMAL_FILE, "chosen": chosen, "predicted": choice["predicted"]}
