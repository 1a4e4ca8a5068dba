"""Learning-rate schedules and what extending a run relies on (issue 17, item 2), without
training: lmflows' reading of levanter's schedules agrees with levanter's own, the checkpoint a
longer run starts from is one levanter keeps, a schedule that means nothing is refused; and
the two promises a new hash attribute needs (issue 17, item 1): at its default an identity is
what it was, and a plain path is refused as a source."""

from __future__ import annotations

import pytest

from tasks.lm.schedules import check_schedule, kept_step, shared_updates

BASE = {"learning_rate": 3e-3, "min_lr_ratio": 0.1}


def _levanter_rates(arguments: dict, total: int):
    import numpy as np
    from levanter.optim import AdamConfig

    from tasks.lm.schedules import levanter_schedule

    config = AdamConfig(
        learning_rate=arguments["learning_rate"],
        min_lr_ratio=arguments["min_lr_ratio"],
        warmup=arguments["warmup"],
        **levanter_schedule(arguments["lr_schedule"], arguments.get("decay")),
    )
    schedule = config.lr_scheduler(total)
    return np.array([float(schedule(step)) for step in range(total)])


def _levanter_shared(arguments: dict, a: int, b: int) -> int:
    import numpy as np

    first, second = _levanter_rates(arguments, a), _levanter_rates(arguments, b)
    count = min(a, b)
    differ = np.flatnonzero(~np.isclose(first[:count], second[:count], rtol=1e-6, atol=0))
    return int(differ[0]) if differ.size else count


@pytest.mark.parametrize(
    "schedule",
    [
        {"lr_schedule": "constant", "warmup": 0.0},
        {"lr_schedule": "constant", "warmup": 4},
        {"lr_schedule": "constant", "warmup": 0.1},  # a fraction: another warmup per total
        {"lr_schedule": "wsd", "warmup": 4, "decay": 0.25},
        {"lr_schedule": "wsd", "warmup": 0.0, "decay": 6},
        {"lr_schedule": "wsd", "warmup": 2, "decay": 0.5},
    ],
    ids=str,
)
def test_shared_updates_are_levanters(schedule):
    arguments = {**BASE, **schedule}
    for a, b in [(40, 80), (40, 41), (37, 100), (80, 40)]:
        assert shared_updates(arguments, a, b) == _levanter_shared(arguments, a, b), (a, b)


def test_cosine_and_linear_runs_share_nothing_with_longer_ones():
    for name in ("cosine", "linear"):
        arguments = {**BASE, "lr_schedule": name, "warmup": 4}
        assert shared_updates(arguments, 40, 80) == 0
        assert kept_step(arguments, 40) is None
        # by levanter's numbers too: they part right after the warmup
        assert _levanter_shared(arguments, 40, 80) <= 5


def test_the_step_a_longer_run_starts_from_is_kept_by_levanter(tmp_path):
    """wsd: the checkpoint of the last step before the decay changes the rate is saved as a
    permanent one, with and without `checkpoint_every`, by levanter's own policy choice."""
    from levanter.checkpoint import CheckpointerConfig

    from tasks.lm.checkpoints import checkpoint_keep

    arguments = {**BASE, "lr_schedule": "wsd", "warmup": 2, "decay": 0.25}
    assert kept_step(arguments, 40) == 30
    assert kept_step({**arguments, "lr_schedule": "constant", "decay": None}, 40) is None
    for every in (None, 7):
        keep = checkpoint_keep(every, 40, also=kept_step(arguments, 40))
        checkpointer = CheckpointerConfig(base_path=str(tmp_path), keep=keep).create("run")
        saved = {
            step
            for step in range(1, 40)
            if step % checkpointer._get_current_step_save_interval(step) == 0
        }
        expected = {30, 39} | ({7, 14, 21, 28, 35} if every else set())
        assert saved == expected, (every, keep)


@pytest.mark.parametrize(
    "schedule, decay, message",
    [
        ("wsd", None, "needs decay="),
        ("constant", 0.2, "does not decay"),
        ("warmup-cosine", None, "must be one of"),
        ("wsd", 0, "must be a positive fraction"),
        ("wsd", 2.5, "must be whole"),
        ("wsd", 39, "take 43 steps, more than num_train_steps=40"),
    ],
)
def test_a_schedule_that_means_nothing_is_refused(schedule, decay, message):
    with pytest.raises(ValueError, match=message):
        check_schedule(schedule, decay, 4, 40)


def test_an_attribute_added_later_leaves_identities_as_they_were_at_its_default():
    from tasks.core import StepDefinitionError, StepRef, step

    @step(hash_attrs=["n"], name="t/added")
    def before(n: int, *, output_path: str):
        pass

    @step(hash_attrs=["n", "extra"], omit_at_default=["extra"], name="t/added")
    def after(n: int, extra: float | None = None, *, output_path: str):
        pass

    assert after.ref_for(3) == before.ref_for(3)
    assert after.ref_for(3, None) == before.ref_for(3)
    assert after.ref_for(3, 0.5) != before.ref_for(3)
    assert after.ref_for(3, StepRef("x/y", "0123456789")) != before.ref_for(3)
    with pytest.raises(StepDefinitionError, match="is not a hash attribute"):

        @step(hash_attrs=["n"], operational=["extra"], omit_at_default=["extra"])
        def bad(n: int, extra: int = 0, *, output_path: str):
            pass

    with pytest.raises(StepDefinitionError, match="needs a default"):

        @step(hash_attrs=["n", "extra"], omit_at_default=["extra"])
        def worse(n: int, extra: list = [], *, output_path: str):  # noqa: B006
            pass


def test_a_plain_path_as_initialize_from_is_refused_with_a_pointer_to_adopt(tmp_path, monkeypatch):
    from tasks.core import StepRef, planning
    from tasks.lm.train import train_lm

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))
    data = {"kjv": StepRef("tokenized/kjv", "0123456789")}
    tokenizer = StepRef("tokenizer/kjv", "0123456789")
    with planning.planning(), pytest.raises(ValueError, match=r"adopt\(\) the folder first"):
        train_lm(data=data, tokenizer=tokenizer, name="x", initialize_from="/data/run/ckpt")
    with planning.planning(), pytest.raises(ValueError, match="needs initialize_from"):
        train_lm(data=data, tokenizer=tokenizer, name="x", initialize_optimizer=True)
