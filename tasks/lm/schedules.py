"""Learning-rate schedules: the names `train_lm` takes, what levanter is given for each, and
which runs of one schedule share their first updates (so a longer run can start from a
shorter one's checkpoint instead of step 0).

levanter's `OptimizerConfig.lr_scheduler` builds warmup (linear from 0), then a stable phase,
then the decay (`decay`: a fraction of the run, or a whole number of steps; None: every step
after the warmup decays). `wsd` (warmup-stable-decay) is levanter's linear decay with a
`decay` given; `constant` is levanter's own (warmup, then the peak rate to the end).

Extending: under `constant` and `wsd`, an update's rate does not depend on the run's total
until the decay begins, provided the warmup is a number of steps (a fraction of the run is
another warmup for another total). `shared_updates` computes how many leading updates two
totals share with the same formulas levanter uses (tests/test_extend.py checks them against
levanter's own schedule); cosine and linear decay over the whole run and are never extended.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Names train_lm accepts: levanter's own, and wsd.
SCHEDULES = ("cosine", "linear", "constant", "wsd", "inv_sqrt", "inv")
# Schedules whose first updates do not depend on the run's total (up to the decay).
EXTENDABLE = ("constant", "wsd")


def levanter_schedule(lr_schedule: str, decay: float | int | None) -> dict[str, Any]:
    """levanter OptimizerConfig's `lr_schedule` and `decay` for one of SCHEDULES."""
    if lr_schedule == "wsd":
        return {"lr_schedule": "linear", "decay": decay}
    return {"lr_schedule": lr_schedule, "decay": decay}


def steps_of(frac_or_steps: float | int, num_train_steps: int) -> int:
    """levanter's reading of `warmup` and `decay`: up to 1.0 a fraction of the run, above it
    a whole number of steps."""
    if frac_or_steps <= 1.0:
        return int(frac_or_steps * num_train_steps)
    return int(frac_or_steps)


def check_schedule(lr_schedule: Any, decay: Any, warmup: Any, num_train_steps: int) -> None:
    """One line for a schedule levanter would refuse late (after compiling) or that means
    nothing: an unknown name, wsd without its decay, constant with one, a warmup or decay
    that is not a number levanter reads (negative, not whole above 1, a bool), a decay of 0
    steps, or a warmup (with its decay) longer than the run."""
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r} must be one of {', '.join(SCHEDULES)}")
    if lr_schedule == "wsd" and decay is None:
        raise ValueError(
            "lr_schedule='wsd' needs decay= (the decay phase: a fraction of the run such as "
            "0.2, or a whole number of steps)"
        )
    if lr_schedule == "constant" and decay is not None:
        raise ValueError(f"lr_schedule='constant' does not decay; decay={decay!r} must be None")
    _check_frac_or_steps("warmup", warmup, zero_ok=True)
    if steps_of(warmup, num_train_steps) > num_train_steps:
        raise ValueError(
            f"warmup={warmup!r} is {steps_of(warmup, num_train_steps)} steps, more than "
            f"num_train_steps={num_train_steps}"
        )
    if decay is None:
        return
    _check_frac_or_steps("decay", decay, zero_ok=False)
    if steps_of(decay, num_train_steps) == 0:
        raise ValueError(
            f"decay={decay!r} of num_train_steps={num_train_steps} is 0 steps (levanter rounds "
            "a fraction down): the run would never decay; give a larger fraction or steps"
        )
    used = steps_of(warmup, num_train_steps) + steps_of(decay, num_train_steps)
    if used > num_train_steps:
        raise ValueError(
            f"warmup={warmup!r} and decay={decay!r} take {used} steps, more than "
            f"num_train_steps={num_train_steps}"
        )


def _check_frac_or_steps(name: str, value: Any, zero_ok: bool) -> None:
    """levanter's rule for `warmup` and `decay`, before anything runs: a number (not a bool),
    a fraction of the run up to 1.0, whole steps above it; `decay` also above 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name}={value!r} must be a fraction of the run or a number of steps")
    if not (value >= 0 if zero_ok else value > 0):
        kind = "a non-negative" if zero_ok else "a positive"
        raise ValueError(f"{name}={value!r} must be {kind} fraction of the run or steps")
    if value > 1 and value % 1:
        raise ValueError(f"{name}={value!r}: above 1 it is a number of steps and must be whole")


def rates(arguments: Mapping[str, Any], num_train_steps: int, count: int) -> Any:
    """The learning rate of updates 0..count-1 of a `constant` or `wsd` run of
    `num_train_steps` (levanter's formulas: optax linear warmup from 0, constant, linear
    decay to `min_lr_ratio` of the peak), as a float64 numpy array."""
    import numpy as np

    lr = float(arguments["learning_rate"])
    total = num_train_steps
    warmup = steps_of(arguments["warmup"], total)
    decay_arg = arguments.get("decay")
    decay = steps_of(decay_arg, total) if decay_arg is not None else total - warmup
    if arguments["lr_schedule"] == "constant":
        decay = total - warmup  # levanter: no stable phase, then a constant "decay"
    stable = total - warmup - decay
    step = np.arange(count, dtype=np.float64)
    out = np.full(count, lr)
    if warmup:
        out = np.where(step < warmup, lr * np.minimum(step, warmup) / warmup, out)
    if arguments["lr_schedule"] == "wsd" and decay:
        start = warmup + stable
        done = np.clip(step - start, 0, decay) / decay
        decayed = lr + (lr * float(arguments["min_lr_ratio"]) - lr) * done
        out = np.where(step >= start, decayed, out)
    return out


def shared_updates(arguments: Mapping[str, Any], total_a: int, total_b: int) -> int:
    """How many leading updates runs of `total_a` and `total_b` steps of the same schedule
    take at the same rates (so the same states, as the data order does not depend on the
    total either). 0 for schedules that are not EXTENDABLE."""
    if arguments.get("lr_schedule") not in EXTENDABLE:
        return 0
    import numpy as np

    count = min(total_a, total_b)
    differ = np.flatnonzero(rates(arguments, total_a, count) != rates(arguments, total_b, count))
    return int(differ[0]) if differ.size else count


def kept_step(arguments: Mapping[str, Any], num_train_steps: int) -> int | None:
    """The checkpoint a run of an EXTENDABLE schedule keeps for longer runs: the last step
    whose state every longer run shares (wsd: the step before its decay changes the rate).
    None when that is the last step (kept anyway) or there is none."""
    shared = shared_updates(arguments, num_train_steps, 2 * num_train_steps)
    step = shared - 1  # checkpoint step-s holds the state after updates 0..s
    if step < 1 or step >= num_train_steps - 1:
        return None
    return step
