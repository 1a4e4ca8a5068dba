"""The cache as experiment authors use it: --param, --force checks, explain (root cause and
blast radius), show, gc, and every experiment planned offline."""

from __future__ import annotations

import json

import pytest

from flows.loader import available_experiments
from tasks.core import lease, storage
from tests.test_cli import flows_cli, flows_cli_many, snapshot


def _err_line(result) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr[-3000:]
    return lines[0]


# --- --param and --force ---------------------------------------------------------------------


def test_param_values_are_json_else_strings_and_change_identities(tmp_path):
    prefix = str(tmp_path / "out")
    default, same, other, words = flows_cli_many(
        ["plan", "toy", "--prefix", prefix],
        ["plan", "toy", "--param", "n=1000", "--param", "factor=2", "--prefix", prefix],
        ["plan", "toy", "--param", "n=7", "--prefix", prefix],
        ["plan", "tests/data/needs_param.py", "--param", "text=hello world"],
    )
    assert default.returncode == same.returncode == other.returncode == 0, other.stderr
    # factor=2 is coerced to the flow's float 2.0 exactly as a run would: same identities
    assert default.stdout.splitlines()[:-1] == same.stdout.splitlines()[:-1]
    assert default.stdout.splitlines()[1] != other.stdout.splitlines()[1]
    assert words.returncode == 0, words.stderr
    assert "1 steps (1 missing)" in words.stdout


BAD_PARAMS = [
    (["plan", "toy", "--param", "nope=1"], "flow 'toy' has no parameter nope (parameters: n"),
    (["run", "toy", "--param", "n"], "--param 'n': expected KEY=VALUE"),
    (["plan", "toy", "--param", "n=abc"], "n: Input should be a valid integer"),
    (["plan", "tests/data/needs_param.py"], "needs parameter text: add --param text=VALUE"),
    (["explain", "tests/data/needs_param.py"], "needs parameter text"),
    (["run", "toy", "--force", "train/*"], "--force train/* matches no step of the plan"),
    (["plan", "toy", "--force", "toy/numbers", "nomatch*"], "its steps are: toy/numbers, "),
]


def test_bad_params_and_idle_force_globs_are_one_line_and_nothing_runs(tmp_path):
    prefix = tmp_path / "out"
    commands = [[*args, "--prefix", str(prefix)] for args, _ in BAD_PARAMS]
    for (args, message), result in zip(BAD_PARAMS, flows_cli_many(*commands)):
        assert result.returncode == 2, (args, result.stderr[-2000:])
        line = _err_line(result)
        assert line.startswith("lmflows: error:") and message in line, (args, line)
        assert not prefix.exists()


# --- explain ---------------------------------------------------------------------------------


def test_explain_names_the_root_cause_and_its_blast_radius(tmp_path):
    prefix = tmp_path / "out"
    run = flows_cli("run", "toy", "--prefix", str(prefix))
    assert run.returncode == 0, run.stderr[-3000:]
    before = snapshot(prefix)
    result = flows_cli("explain", "toy", "--param", "factor=3", "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr
    assert snapshot(prefix) == before, "explain must not write anything"
    lines = result.stdout.splitlines()
    by_step = {ln.split(":")[0]: i for i, ln in enumerate(lines) if not ln.startswith(" ")}
    assert lines[by_step[next(k for k in by_step if k.startswith("toy/numbers-"))]].endswith(
        "committed (cache hit)"
    )
    scale_keys = [k for k in by_step if k.startswith("toy/scale-")]
    root = next(k for k in scale_keys if "root cause: 1 hash attribute" in lines[by_step[k]])
    i = by_step[root]
    assert lines[i + 1].strip() == "factor: 2.0 -> 3.0"
    summary = next(k for k in by_step if k.startswith("toy/summary-"))
    second_scale = next(k for k in scale_keys if k != root)
    assert lines[i + 2].strip() == (
        f"blast radius (3 step(s) re-run): {root}, {summary}, {second_scale}"
    )
    for follower in (summary, second_scale):
        line = lines[by_step[follower]]
        assert "only upstream changed" in line and line.endswith(f"root: {root}")
    only = flows_cli(
        "explain", "toy", "--param", "factor=3", "--step", "toy/summary", "--prefix", str(prefix)
    )
    assert len(only.stdout.splitlines()) == 1 and only.stdout.startswith(summary)


def test_explain_changed_attribute_in_a_file_experiment(tmp_path):
    prefix = tmp_path / "out"
    run = flows_cli("run", "tests/data/file_experiment.py", "--prefix", str(prefix))
    assert run.returncode == 0, run.stderr[-3000:]
    result = flows_cli("explain", "tests/data/file_experiment_k8.py", "--prefix", str(prefix))
    lines = result.stdout.splitlines()
    derive = next(i for i, ln in enumerate(lines) if ln.startswith("t/derive-"))
    assert (
        "root cause: 1 hash attribute(s) changed against the nearest committed t/derive-"
        in (lines[derive])
    )
    assert lines[derive + 1].strip() == "k: 7 -> 8"
    assert lines[derive + 2].strip().startswith("blast radius (1 step(s) re-run): t/derive-")


# --- show ------------------------------------------------------------------------------------


def test_show_prints_one_json_object_and_needs_no_code(tmp_path):
    prefix = tmp_path / "out"
    assert flows_cli("run", "toy", "--prefix", str(prefix)).returncode == 0
    words = next(prefix.glob("toy/words-*"))
    name_with_hash = f"toy/{words.name}"
    result = flows_cli("show", name_with_hash, "--prefix", str(prefix))
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert set(shown) == {"name", "hash", "path", "metadata", "provenance", "files"}
    assert shown["name"] == "toy/words" and f"{shown['name']}-{shown['hash']}" == name_with_hash
    assert shown["path"] == str(words)
    assert shown["metadata"] == {"distinct": 9}
    assert shown["provenance"]["function"] == "tasks.toy.count_words"
    assert shown["files"] == [
        {"path": "counts.json", "bytes": (words / "counts.json").stat().st_size}
    ]
    # the same as a Python call
    from tasks.core.inventory import describe

    assert describe(name_with_hash, str(prefix)) == shown
    missing = flows_cli("show", "toy/words-0000000000", "--prefix", str(prefix))
    assert missing.returncode == 1
    assert _err_line(missing) == f"lmflows: toy/words-0000000000 is not committed under {prefix}"


# --- gc --------------------------------------------------------------------------------------


def test_gc_lists_unreachable_outputs_deletes_only_with_delete_and_never_a_live_lease(tmp_path):
    prefix = tmp_path / "out"
    assert flows_cli("run", "toy", "--prefix", str(prefix)).returncode == 0
    reachable = {p for p in prefix.glob("toy/*") if p.is_dir()}
    assert flows_cli("run", "toy", "--param", "n=7", "--prefix", str(prefix)).returncode == 0
    before = snapshot(prefix)

    listed = flows_cli("gc", "--prefix", str(prefix))
    assert listed.returncode == 0, listed.stderr
    assert snapshot(prefix) == before, "gc without --delete writes nothing"
    rows = [ln.split()[0] for ln in listed.stdout.splitlines() if ln.startswith("toy/")]
    assert len(rows) == 4 and "4 committed outputs" in listed.stdout
    assert "nothing deleted" in listed.stdout

    # another live process (this one) holds the lease of one of them
    held = rows[0]
    lease_path = storage.lease_path(held, str(prefix))
    assert lease.try_acquire(lease_path, "test-holder")
    try:
        deleted = flows_cli("gc", "--delete", "--prefix", str(prefix))
    finally:
        lease.release(lease_path, "test-holder")
    assert deleted.returncode == 0, deleted.stderr
    assert f"kept {held}: a run holds its lease" in deleted.stdout
    assert (prefix / held / ".lmflows" / "commit.json").exists()
    for name in rows[1:]:
        assert f"deleted {name}" in deleted.stdout
        assert not (prefix / name / ".lmflows" / "commit.json").exists()
        assert not (prefix / name).exists()

    status = flows_cli("status", "--prefix", str(prefix))
    assert "6 committed steps" in status.stdout  # 5 reachable + the one that was in use
    again = flows_cli("gc", "--delete", "--prefix", str(prefix))
    assert f"deleted {held}" in again.stdout
    assert flows_cli("plan", "toy", "--prefix", str(prefix)).stdout.count(" committed ") == 5
    assert len(reachable) == 5
    assert all((p / ".lmflows" / "commit.json").exists() for p in reachable)


# --- every experiment plans offline ----------------------------------------------------------


@pytest.mark.parametrize("experiment", available_experiments())
def test_every_experiment_plans_offline_and_writes_nothing(experiment, tmp_path):
    prefix = tmp_path / "prefix"
    result = flows_cli(
        "plan",
        experiment,
        "--prefix",
        str(prefix),
        env={"PREFECT_API_URL": "http://127.0.0.1:9/api", "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert " missing " in result.stdout
    assert not prefix.exists()


def test_there_are_experiments_to_plan():
    assert {"demo", "lr_sweep", "toy", "tinystories"} <= set(available_experiments())


def test_lr_sweep_plans_one_training_per_learning_rate(tmp_path):
    prefix = str(tmp_path / "p")
    result, one, close = flows_cli_many(
        ["plan", "lr_sweep", "--prefix", prefix],
        ["plan", "lr_sweep", "--param", "learning_rates=[0.02]", "--prefix", prefix],
        # two rates that print alike in the step name (0.001): only the hash tells them apart
        ["plan", "lr_sweep", "--param", "learning_rates=[0.001, 0.0010000001]", "--prefix", prefix],
    )
    trainings = [ln.split()[0] for ln in result.stdout.splitlines() if ln.startswith("checkpo")]
    assert len(set(trainings)) == 3
    assert [ln for ln in one.stdout.splitlines() if ln.startswith("checkpoints/")][0].startswith(
        "checkpoints/sweep-kjv-lr0.02-"
    )
    trainings = [ln.split()[0] for ln in close.stdout.splitlines() if ln.startswith("checkpo")]
    assert len(trainings) == 2 and len(set(trainings)) == 2, close.stdout


# --- found by attacking the first version -----------------------------------------------------


def test_plan_hashes_the_parameter_values_a_run_uses(tmp_path):
    prefix = str(tmp_path / "out")
    run = flows_cli("run", "tests/data/float_default.py", "--prefix", prefix)
    assert run.returncode == 0, run.stderr[-3000:]
    plan, text, twice = flows_cli_many(
        ["plan", "tests/data/float_default.py", "--prefix", prefix],
        ["plan", "tests/data/float_default.py", "--param", "text=123", "--prefix", prefix],
        ["plan", "toy", "--param", "n=1", "--param", "n=2", "--prefix", prefix],
    )
    assert "2 steps (2 committed)" in plan.stdout, plan.stdout
    assert text.returncode == 0, text.stderr  # a str parameter takes the text as it is
    assert twice.returncode == 2 and "--param n is given twice" in twice.stderr


def test_explain_on_an_empty_prefix_names_the_new_steps_as_roots(tmp_path):
    result, none = flows_cli_many(
        ["explain", "toy", "--prefix", str(tmp_path / "empty")],
        ["explain", "toy", "--step", "nomatch*", "--prefix", str(tmp_path / "e")],
    )
    assert result.returncode == 0, result.stderr
    heads = {ln.split(":")[0]: ln for ln in result.stdout.splitlines() if not ln.startswith(" ")}
    numbers = next(k for k in heads if k.startswith("toy/numbers-"))
    words = next(k for k in heads if k.startswith("toy/words-"))
    for root in (numbers, words):
        assert "root cause: no committed output named" in heads[root]
    summary = next(k for k in heads if k.startswith("toy/summary-"))
    assert heads[summary].endswith(f"root: {numbers}, {words}")
    assert none.returncode == 2 and "--step nomatch* matches no step" in none.stderr


def test_gc_refuses_to_delete_when_an_experiment_cannot_be_planned(tmp_path, monkeypatch, capsys):
    import flows.loader
    from flows.cli import main

    prefix = tmp_path / "out"
    monkeypatch.setenv("LMFLOWS_PREFIX", str(prefix))  # main() sets it; restored after
    assert flows_cli("run", "toy", "--param", "n=7", "--prefix", str(prefix)).returncode == 0
    before = snapshot(prefix)
    monkeypatch.setattr(
        flows.loader, "available_experiments", lambda: ["toy", "no_such_experiment"]
    )
    assert main(["gc", "--prefix", str(prefix)]) == 0
    listed = capsys.readouterr()
    assert "experiment no_such_experiment could not be planned" in listed.err
    assert "4 committed outputs" in listed.out
    assert main(["gc", "--delete", "--prefix", str(prefix)]) == 2
    refused = capsys.readouterr()
    assert "gc --delete refused" in refused.err and "no_such_experiment" in refused.err
    assert snapshot(prefix) == before
