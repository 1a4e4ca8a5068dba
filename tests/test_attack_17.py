"""Findings of an outside attack on adopt, --only and evaluate-while-training (session 17).

Each test is a promise of the docs that a hostile or careless use broke; see the commit
messages for the one-paragraph descriptions."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from tasks.core import adopt, set_force, step
from tests.conftest import run_python
from tests.test_adopt import FIXTURE_IDENTITY, make_folder

DRIFT = "tests/data/adopt_drift_experiment.py"


def test_only_refuses_a_force_glob_that_the_selection_leaves_out():
    """`--force GLOB` that matches no step of the plan is an error; with `--only` the plan is
    the selection, and a forced step outside it would silently not be re-executed."""
    from flows.planned import ArgumentError, plan_command
    from tasks.core.decorator import set_only

    try:
        with pytest.raises(ArgumentError, match="--force toy/words"):
            plan_command("toy", [], force=["toy/words"], only=["toy/numbers"])
        # inside the selection it is fine
        plan_command("toy", [], force=["toy/numbers"], only=["toy/summary"])
    finally:
        set_force([])
        set_only(None)


def test_a_folder_changed_between_plan_and_run_is_refused_not_silently_skipped(tmp_path):
    """`run --only` plans (fingerprint F1, the selection's identities follow from it), then the
    run adopts again: a file rewritten in between gave F2 and new downstream identities, none
    of them selected, so the run ran nothing and reported success. It must stop instead."""
    out = tmp_path / "out"
    folder = make_folder(tmp_path / "cache")
    ran = run_python(
        ["-m", "flows", "run", DRIFT, "--prefix", str(out), "--param", f"path={folder}",
         "--only", "t/read-adopted"]
    )  # fmt: skip
    assert ran.returncode != 0, ran.stdout[-2000:] + ran.stderr[-2000:]
    assert "changed since it was planned" in ran.stdout + ran.stderr
    assert "file a.txt has other content (same size)" in ran.stdout + ran.stderr
    assert not list(out.glob("t/read-adopted-*")), "nothing read the changed folder"
    assert not list(out.glob("adopted/*")), "the new content was not recorded either"


def test_a_checkpoint_step_in_other_digits_is_refused_by_name():
    """An event's label is text: `str.isdigit` is true for '²' and Arabic-Indic digits;
    '²' then failed in int() with a message naming no parameter, '٣' became step 3."""
    from flows.evaluate_checkpoint import BadCheckpointEvent, step_number

    for text in ("²", "٣", "３"):
        with pytest.raises(BadCheckpointEvent, match="is not a step number"):
            step_number(text)
    assert step_number("0012") == 12


@step(hash_attrs=["data", "tokenizer"], name="t/announcing-training")
def announcing_training(data: dict, tokenizer: str, *, output_path: str) -> dict:
    """What a training's checkpoint announcements would carry (train_lm's own call)."""
    from tasks.lm.checkpoint_events import announce_saves

    config = types.SimpleNamespace(create=lambda run_id: None)
    announcer = announce_saves(config, data, tokenizer)
    return dict(announcer.args[2])


def test_a_training_on_adopted_data_announces_inputs_the_evaluation_can_read(prefix, tmp_path):
    """migrating-from-marin.md: adopt a Marin tokenized cache and train on it. The training's
    `lmflows.checkpoint.saved` payload names its inputs by identity, computed from the paths
    its body received; an adopted folder lies outside the prefix, so it was named None and
    every evaluate-checkpoint run of such a training was refused. And given the identity by
    hand, the flow resolved it under the prefix (the record folder, holding adopted.json),
    not the adopted folder, so the evaluation read the wrong place (next test)."""
    data_folder = make_folder(tmp_path / "marin" / "tokenized")
    tok_folder = tmp_path / "marin" / "tokenizer"
    tok_folder.mkdir(parents=True)
    (tok_folder / "tokenizer.json").write_text("{}")
    data = adopt(str(data_folder), name="fixture")
    tokenizer = adopt(str(tok_folder), name="tok")
    assert data.name_with_hash == FIXTURE_IDENTITY

    payload = announcing_training({"kjv": data}, tokenizer).metadata
    assert payload == {
        "data": {"kjv": data.name_with_hash},
        "tokenizer": tokenizer.name_with_hash,
    }


def test_the_evaluation_reads_an_adopted_input_where_it_lies(prefix, tmp_path):
    """Given an adopted input's identity (the training's provenance names it so), the flow
    must hand the evaluation the adopted folder, as `AdoptedRef.path` does."""
    from flows.evaluate_checkpoint import checked_inputs

    data_folder = make_folder(tmp_path / "marin" / "tokenized")
    tok_folder = tmp_path / "marin" / "tokenizer"
    tok_folder.mkdir(parents=True)
    (tok_folder / "tokenizer.json").write_text("{}")
    data = adopt(str(data_folder), name="fixture")
    tokenizer = adopt(str(tok_folder), name="tok")
    recorded = {"attrs": {"data": {"kjv": data.name_with_hash}, "tokenizer": tokenizer.identity}}
    refs, tok = checked_inputs(
        "checkpoints/x-0123456789", {"kjv": data.name_with_hash}, tokenizer.identity, recorded
    )
    assert refs["kjv"].path == str(data_folder)
    assert tok.path == str(tok_folder)
    assert Path(refs["kjv"].path, "a.txt").exists()
