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
    nothing: an unknown name, wsd without its decay, constant with one, a decay that is not
    positive, not whole above 1, or does not fit the run with its warmup."""
    if lr_schedule not in SCHEDULES:
        raise ValueError(f"lr_schedule={lr_schedule!r} must be one of {', '.join(SCHEDULES)}")
    if lr_schedule == "wsd" and decay is None:
        raise ValueError(
            "lr_schedule='wsd' needs decay= (the decay phase: a fraction of the run such as "
            "0.2, or a whole number of steps)"
        )
    if lr_schedule == "constant" and decay is not None:
        raise ValueError(f"lr_schedule='constant' does not decay; decay={decay!r} must be None")
    if decay is None:
        return
    if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not decay > 0:
        raise ValueError(f"decay={decay!r} must be a positive fraction of the run or steps")
    if decay > 1 and decay % 1:
        raise ValueError(f"decay={decay!r}: above 1 it is a number of steps and must be whole")
    if isinstance(warmup, (int, float)) and not isinstance(warmup, bool) and warmup >= 0:
        used = steps_of(warmup, num_train_steps) + steps_of(decay, num_train_steps)
        if used > num_train_steps:
            raise ValueError(
                f"warmup={warmup!r} and decay={decay!r} take {used} steps, more than "
                f"num_train_steps={num_train_steps}"
            )


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
