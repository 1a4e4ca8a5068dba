"""The arithmetic of an isoflop analysis (Chinchilla's "approach 2"), apart from any I/O so it
can be tested on exactly known curves.

Conventions: N is a model's parameter count, D the tokens it trains on, C = 6 N D the
training compute in FLOPs. Per budget C, the loss of the models trained with it is fitted as
a parabola in x = ln N (`numpy.polyfit`); its vertex is that budget's optimum N_opt, and
D_opt = C / (6 N_opt). Across budgets, ln N_opt = a ln C + b and ln D_opt likewise
(`numpy.polyfit` of degree 1): the power laws N_opt = k C^a. Every value returned is plain
JSON (floats, strings, lists, dicts).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

FLOPS_PER_PARAM_TOKEN = 6  # forward + backward: C = 6 N D
MIN_SIZES = 3  # a parabola needs three points
MIN_BUDGETS = 2  # a line needs two

# The status of a budget's parabola.
MINIMUM = "minimum"  # opens upwards, vertex inside the sampled sizes: an optimum
OUTSIDE = "outside_range"  # opens upwards, vertex beyond the sampled sizes: extrapolated
NO_MINIMUM = "no_minimum"  # opens downwards or is flat: no optimum at all
# A vertex further than FAR times the sampled range of ln N beyond it belongs to a nearly
# straight curve (its position is noise): reported as no minimum, not as an extrapolation.
FAR = 1.0


class ScalingFitError(ValueError):
    """Points that cannot give the fit asked for; the message names what is missing."""


def _finite_positive(label: str, values: Iterable[float]) -> np.ndarray:
    array = np.asarray(list(values), dtype=float)
    bad = [v for v in array.tolist() if not (math.isfinite(v) and v > 0)]
    if bad:
        raise ScalingFitError(f"{label} must be finite and positive, got {bad}")
    return array


def tokens_for(budget: float, params: float) -> float:
    """D = C / (6 N)."""
    return budget / (FLOPS_PER_PARAM_TOKEN * params)


def train_steps(budget: float, params: float, tokens_per_step: int) -> int:
    """The number of steps of `tokens_per_step` tokens closest to spending `budget` on a model
    of `params` parameters: round(C / (6 N) / tokens_per_step)."""
    return round(tokens_for(budget, params) / tokens_per_step)


def fit_isoflop(budget: float, params: Sequence[float], losses: Sequence[float]) -> dict[str, Any]:
    """The parabola loss = c2 x^2 + c1 x + c0, x = ln N, through one budget's runs, and its
    optimum.

    `status` is `minimum` (vertex within the sampled sizes), `outside_range` (a vertex beyond
    them, by at most `FAR` times their range in ln N: an extrapolation, flagged) or
    `no_minimum` (the parabola opens downwards, or is so flat that its vertex lies further
    out; `params_opt` etc. are then None, never a maximum passed off as an optimum)."""
    (budget,) = _finite_positive("budget", [budget]).tolist()
    n = _finite_positive(f"budget {budget:g}: parameter counts", params)
    loss = np.asarray(list(losses), dtype=float)
    if len(loss) != len(n):
        raise ScalingFitError(f"budget {budget:g}: {len(n)} parameter counts, {len(loss)} losses")
    if not np.all(np.isfinite(loss)):
        raise ScalingFitError(f"budget {budget:g}: losses must be finite, got {loss.tolist()}")
    distinct = sorted(set(n.tolist()))
    if len(distinct) < MIN_SIZES:
        raise ScalingFitError(
            f"budget {budget:g}: {len(distinct)} model size(s) {distinct}; fitting a parabola "
            f"needs at least {MIN_SIZES} different sizes per budget"
        )
    x = np.log(n)
    c2, c1, c0 = (float(v) for v in np.polyfit(x, loss, 2))
    result: dict[str, Any] = {
        "budget": budget,
        "coefficients": [c2, c1, c0],
        "log_params_range": [float(x.min()), float(x.max())],
        "status": NO_MINIMUM,
        "params_opt": None,
        "tokens_opt": None,
        "loss_opt": None,
    }
    if c2 <= 0:  # a maximum or a line: there is no optimum to report
        return result
    vertex = -c1 / (2 * c2)
    lo, hi = float(x.min()), float(x.max())
    result["vertex_log_params"] = vertex
    if not lo - FAR * (hi - lo) <= vertex <= hi + FAR * (hi - lo):
        return result  # a nearly straight curve: its far-away vertex says nothing
    params_opt = math.exp(vertex)
    result.update(
        status=MINIMUM if x.min() <= vertex <= x.max() else OUTSIDE,
        params_opt=params_opt,
        tokens_opt=tokens_for(budget, params_opt),
        loss_opt=c0 - c1 * c1 / (4 * c2),
    )
    return result


def parabola(coefficients: Sequence[float], params: Sequence[float] | np.ndarray) -> np.ndarray:
    """The fitted loss at `params` (for plots)."""
    return np.polyval(np.asarray(coefficients, dtype=float), np.log(np.asarray(params, float)))


def fit_power_law(x: Sequence[float], y: Sequence[float], what: str = "y") -> dict[str, Any]:
    """y = coefficient * x ** exponent, by a straight-line fit of ln y on ln x."""
    xs = _finite_positive(f"{what}: x", x)
    ys = _finite_positive(f"{what}: y", y)
    if len(xs) != len(ys):
        raise ScalingFitError(f"{what}: {len(xs)} x values, {len(ys)} y values")
    if len(set(xs.tolist())) < MIN_BUDGETS:
        raise ScalingFitError(
            f"{what}: a power law needs at least {MIN_BUDGETS} different budgets, got "
            f"{sorted(set(xs.tolist()))}"
        )
    exponent, intercept = (float(v) for v in np.polyfit(np.log(xs), np.log(ys), 1))
    return {"exponent": exponent, "coefficient": math.exp(intercept), "points": len(xs)}


def power_law(law: Mapping[str, Any], x: float | np.ndarray) -> Any:
    """Evaluate a fitted power law at `x`."""
    return law["coefficient"] * np.power(x, law["exponent"])


def fit_frontier(
    optima: Sequence[Mapping[str, Any]], include_extrapolated: bool = False
) -> dict[str, Any]:
    """N_opt(C) and D_opt(C) as power laws through the budgets' optima.

    Only optima inside their sampled range count unless `include_extrapolated`; budgets
    without a minimum never do. Raises `ScalingFitError` naming the budgets left out when
    fewer than two remain."""
    usable = {MINIMUM, OUTSIDE} if include_extrapolated else {MINIMUM}
    chosen = [o for o in optima if o["status"] in usable]
    if len({o["budget"] for o in chosen}) < MIN_BUDGETS:
        left_out = {f"{o['budget']:g}": o["status"] for o in optima if o not in chosen}
        raise ScalingFitError(
            f"the frontier needs optima of at least {MIN_BUDGETS} budgets; usable: "
            f"{[o['budget'] for o in chosen]}, left out: {left_out}"
            + ("" if include_extrapolated else " (include_extrapolated=True uses out-of-range)")
        )
    budgets = [o["budget"] for o in chosen]
    return {
        "budgets": budgets,
        "params": fit_power_law(budgets, [o["params_opt"] for o in chosen], "N_opt(C)"),
        "tokens": fit_power_law(budgets, [o["tokens_opt"] for o in chosen], "D_opt(C)"),
    }


def nearest_size(params_by_size: Mapping[str, float], target: float) -> str:
    """The size whose parameter count is closest to `target` on a log scale (a model twice
    too big is as far off as one half too small); ties go to the smaller model."""
    if not params_by_size:
        raise ScalingFitError("no model sizes to choose from")
    (target,) = _finite_positive("target parameter count", [target]).tolist()
    return min(
        params_by_size,
        key=lambda size: (abs(math.log(params_by_size[size] / target)), params_by_size[size]),
    )
