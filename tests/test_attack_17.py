"""Findings of an outside attack on adopt, --only and evaluate-while-training (session 17).

Each test is a promise of the docs that a hostile or careless use broke; see the commit
messages for the one-paragraph descriptions."""

from __future__ import annotations

import json
import os
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
    with pytest.raises(BadCheckpointEvent, match="is not a step number"):
        step_number("9" * 5000)  # int() itself refuses more than 4300 digits, naming nothing
    assert step_number("0012") == 12


@step(hash_attrs=["data", "tokenizer"], name="t/announcing-training")
def announcing_training(data: dict, tokenizer: str, *, output_path: str) -> dict:
    """What a training's checkpoint announcements would carry (train_lm's own call)."""
    from tasks.lm.checkpoint_events import announce_saves

    config = types.SimpleNamespace(create=lambda run_id: None)
    announcer = announce_saves(config)
    return dict(announcer.args[2])


def test_a_training_on_adopted_data_announces_inputs_the_evaluation_can_read(prefix, tmp_path):
    """migrating-from-marin.md: adopt a Marin tokenized cache and train on it. The training's
    `lmflows.checkpoint.saved` payload names its inputs by identity; computed from the paths
    its body received, an adopted folder (outside the prefix) was named None and every
    evaluate-checkpoint run of such a training was refused (now: from the step's identity).
    And given the identity by hand, the flow resolved it under the prefix (the record folder,
    holding adopted.json), not the adopted folder, so the evaluation read the wrong place
    (next test)."""
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


# --- promises the existing tests did not hold (mutants that survived them) --------------------


def test_a_pinned_fingerprint_is_checked_on_the_first_adoption_too(prefix, tmp_path):
    """docs: `fingerprint=` "refuses any other content, also on the first adoption"."""
    from tasks.core import AdoptError

    folder = make_folder(tmp_path / "cache")
    with pytest.raises(AdoptError, match="not the expected " + "0" * 64):
        adopt(str(folder), name="fixture", fingerprint="0" * 64)
    assert not Path(prefix).exists(), "nothing recorded"


def test_the_folders_own_lmflows_folder_is_not_content(prefix, tmp_path):
    """docs: the file list is "everything below it but a top-level `.lmflows/`"."""
    folder = make_folder(tmp_path / "cache")
    (folder / ".lmflows").mkdir()
    (folder / ".lmflows" / "state.json").write_text("{}")
    assert adopt(str(folder), name="fixture").name_with_hash == FIXTURE_IDENTITY


def _counting_digests(monkeypatch, folder: Path) -> list[str]:
    from tasks.core import stores

    read: list[str] = []
    real = stores.LocalStore.digest

    def counting(self, url):
        read.append(os.path.relpath(url, folder))
        return real(self, url)

    monkeypatch.setattr(stores.LocalStore, "digest", counting)
    return read


def test_the_run_after_a_plan_reuses_what_the_plan_read(prefix, tmp_path, monkeypatch):
    """docs: "`plan` reads but writes nothing; the run that follows in the same process
    reuses what `plan` read"."""
    from tasks.core import planning

    folder = make_folder(tmp_path / "cache")
    read = _counting_digests(monkeypatch, folder)
    with planning.planning():
        planned = adopt(str(folder), name="fixture")
    assert sorted(read) == ["a.txt", "sub/b.bin"]
    assert adopt(str(folder), name="fixture") == planned
    assert sorted(read) == ["a.txt", "sub/b.bin"], "read once"


def _index_file(prefix: str, location: Path) -> Path:
    from tasks.core.adopt import INDEX_DIR, _index_key

    return Path(prefix, INDEX_DIR, _index_key(str(location)) + ".json")


def test_a_damaged_index_record_is_ignored_not_trusted(prefix, tmp_path, monkeypatch):
    """A record whose file list no longer gives its fingerprint (a flipped digest) is not one
    lmflows wrote: the folder is read again, and the unchanged folder keeps its identity."""
    from tasks.core.adopt import _MEMO

    folder = make_folder(tmp_path / "cache")
    first = adopt(str(folder), name="fixture")
    index = _index_file(prefix, folder)
    record = json.loads(index.read_text())
    record["files"]["a.txt"]["sha256"] = "0" * 64
    index.write_text(json.dumps(record))
    _MEMO.clear()
    read = _counting_digests(monkeypatch, folder)
    assert adopt(str(folder), name="fixture") == first
    assert "a.txt" in read


def test_an_index_record_of_another_location_is_ignored(prefix, tmp_path):
    """A record copied (or planted) at another location's key describes other files: it
    neither refuses nor keys this folder."""
    from tasks.core.adopt import _MEMO

    first = make_folder(tmp_path / "first")
    other = make_folder(tmp_path / "other")
    (other / "a.txt").write_text("HELLO\n")
    adopt(str(first), name="fixture")
    _index_file(prefix, other).write_text(_index_file(prefix, first).read_text())
    _MEMO.clear()
    assert adopt(str(other), name="fixture").name_with_hash != FIXTURE_IDENTITY


@step(hash_attrs=["n"], name="t/outer")
def outer(n: int, *, output_path: str) -> dict:
    """A step whose body calls another step (a nested call, never planned)."""
    from tests.helpers.steps import source

    return {"inner": source(n).name_with_hash}


@pytest.fixture
def only():
    """`--only` as the command line sets it, reset after the test."""
    from tasks.core.decorator import set_only

    yield set_only
    set_only(None)


def test_only_skipped_calls_return_committed_metadata_and_nested_calls_run(prefix, call_log, only):
    """docs: a call outside the selection "returns its StepRef without running (with its
    committed metadata if it is committed)"; a step's body runs what it calls."""
    from tasks.core import flow, records
    from tests.conftest import calls
    from tests.helpers.steps import source

    @flow(name="only-attack")
    def body() -> dict:
        return {"source": source(3), "outer": outer(4)}

    source_ref = source.ref_for(3)
    outer_ref = outer.ref_for(4)
    only({source_ref.name_with_hash})
    body()  # commits source(3)
    only({outer_ref.name_with_hash})
    result = body()
    assert result["source"].metadata == {"n": 3}, "committed metadata"
    assert calls(call_log) == ["source-3", "source-4"]
    assert records.read_commit(source.ref_for(4).name_with_hash) is not None


def test_only_applies_to_each_call_of_a_map(prefix, call_log, only):
    from tasks.core import flow
    from tests.conftest import calls
    from tests.helpers.steps import source

    @flow(name="only-map-attack")
    def body() -> list:
        return [f.result() for f in source.map([1, 2, 3])]

    only({source.ref_for(2).name_with_hash})
    body()
    assert calls(call_log) == ["source-2"]


def test_a_plan_without_only_clears_an_earlier_selection(only):
    from flows.planned import plan_command
    from tasks.core import decorator

    plan_command("toy", [], only=["toy/numbers"])
    assert decorator._ONLY is not None
    plan_command("toy", [])
    assert decorator._ONLY is None


def test_a_committed_trainings_inputs_are_compared_with_its_provenance():
    """An event naming other data or another tokenizer than a committed training's
    provenance records is refused (the running case is tested with its lease)."""
    from flows.evaluate_checkpoint import BadCheckpointEvent, checked_inputs

    recorded = {"attrs": {"data": {"kjv": "tokenized/kjv-0123456789"},
                          "tokenizer": "tokenizer/t-0123456789"}}  # fmt: skip
    training = "checkpoints/x-0123456789"
    for data, tokenizer in (
        ({"kjv": "tokenized/other-0123456789"}, "tokenizer/t-0123456789"),
        ({"kjv": "tokenized/kjv-0123456789"}, "tokenizer/u-0123456789"),
        ({"kjv": "tokenizer/t-0123456789"}, "tokenized/kjv-0123456789"),
    ):
        with pytest.raises(BadCheckpointEvent, match="are not checkpoints/x-0123456789's inputs"):
            checked_inputs(training, data, tokenizer, recorded)


def test_a_checkpoint_is_found_only_when_its_metadata_names_its_step(prefix):
    """A `step-2` folder whose levanter metadata names another step (a half-overwritten or
    planted one) is not checkpoint 2."""
    from tasks.lm.evaluate_checkpoint import find_checkpoint

    training = "checkpoints/x-0123456789"
    folder = Path(prefix, training, "checkpoints", "step-2")
    folder.mkdir(parents=True)
    (folder / "metadata.json").write_text(json.dumps({"step": 5}))
    assert find_checkpoint(training, 2, prefix) is None
    (folder / "metadata.json").write_text(json.dumps({"step": 2}))
    assert find_checkpoint(training, 2, prefix) == f"{training}/checkpoints/step-2"


def test_a_path_beside_the_prefix_is_not_under_it():
    """`/data/out2/...` is not below the prefix `/data/out`: an announcement never names
    another prefix's output as this one's."""
    from tasks.lm.checkpoint_events import identity_under

    assert identity_under("/data/out2/tokenized/x-0123456789", "/data/out") is None
    assert identity_under("/data/out/tokenized/x-0123456789", "/data/out/") == (
        "tokenized/x-0123456789"
    )
