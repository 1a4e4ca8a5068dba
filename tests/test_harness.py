"""harness_eval (tasks/lm/harness.py): lm-evaluation-harness through levanter on a tiny real
model, with the bundled local task (data/harness/); its identity, its argument checks and the
task data's provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.helpers.api import final_task_states

REPO = Path(__file__).resolve().parent.parent
TASK = "kjv_completion"


def _pipeline(max_eval_instances, task_folder=None, tasks=(TASK,)) -> dict:
    """The shared tiny model (tests/helpers/tiny.py) and its harness evaluation: a flow body
    (run or planned)."""
    from tasks.lm.harness import harness_eval, harness_tasks
    from tests.helpers.tiny import tiny_base

    base = tiny_base()
    scores = harness_eval(
        base["model"],
        base["tokenizer"],
        list(tasks),
        name="harness-tiny",
        task_folder=task_folder or harness_tasks(),
        max_eval_instances=max_eval_instances,
    )
    return {"model": base["model"], "harness": scores}


def _plan(**kwargs) -> dict[str, str]:
    """step name -> name-with-hash of the pipeline planned with `kwargs`."""
    from tasks.core import planning

    with planning.planning() as plan:
        _pipeline(**kwargs)
    return {item.ref.name: key for key, item in plan.steps.items()}


def _artifact_rows(flow_run_id, key: str) -> list[dict]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    [table] = [a for a in artifacts if a.key == key]
    return json.loads(table.data)


def test_task_data_is_reproducible_held_out_and_small():
    import importlib.util

    from tasks.tokenization import _split_of

    spec = importlib.util.spec_from_file_location("make_task", REPO / "data/harness/make_task.py")
    make_task = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_task)

    checked_in = (REPO / "data" / "harness" / "kjv_completion.jsonl").read_text(encoding="utf-8")
    items = make_task.build()
    assert make_task.render(items) == checked_in  # make_task.py rebuilds it byte for byte
    assert len(items) == make_task.ITEMS and len(checked_in.encode()) < 200_000
    for item in items:
        assert len(item["choices"]) == 4 == len(set(item["choices"]))
        assert 0 <= item["label"] < 4
        chapter = item["id"].rsplit("-", 1)[0]
        # held out: the demo's tokenize step (defaults) puts the chapter in validation
        assert _split_of(chapter, 0.05, 0) == "validation", item["id"]


def test_max_eval_instances_and_task_data_rekey_only_the_harness_step(tmp_path, monkeypatch):
    from tasks.lm import harness

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path / "out"))
    base = _plan(max_eval_instances=8)
    other = _plan(max_eval_instances=16)
    assert base.keys() == other.keys()
    assert sorted(n for n in base if base[n] != other[n]) == ["harness/harness-tiny"]

    # Editing the local task's data re-keys the harness step too (and only it).
    folder = tmp_path / "tasks"
    folder.mkdir()
    for source in (REPO / "data" / "harness").glob("kjv_completion.*"):
        (folder / source.name).write_bytes(source.read_bytes())
    copied = _plan(max_eval_instances=8, task_folder=harness.harness_tasks(str(folder)))
    with (folder / "kjv_completion.jsonl").open("a") as handle:
        handle.write(json.dumps({"id": "x", "context": "a", "choices": list("bcde"), "label": 0}))
        handle.write("\n")
    edited = _plan(max_eval_instances=8, task_folder=harness.harness_tasks(str(folder)))
    assert sorted(n for n in base if copied[n] != edited[n]) == ["harness/harness-tiny"]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_eval_instances=0), "max_eval_instances must be a positive integer"),
        (dict(max_eval_instances=8, tasks=()), "tasks must be a non-empty list"),
        (dict(max_eval_instances=8, tasks=("kjv_complete",)), r"unknown harness task.*kjv_compl"),
        (
            dict(max_eval_instances=8, task_folder={"path": "data/harness", "sha256": "0" * 64}),
            "changed since its digest was taken",
        ),
    ],
    ids=["zero-instances", "no-tasks", "unknown-task", "stale-digest"],
)
def test_bad_input_is_refused_before_any_work(kwargs, message, prefix):
    from tasks.core import StepRef, flow
    from tasks.lm.harness import harness_eval, harness_tasks

    with pytest.raises(ValueError, match=message):
        _plan(**kwargs)

    @flow(name="harness-bad")
    def bad() -> None:
        args = {"task_folder": harness_tasks(), "tasks": [TASK], **kwargs}
        harness_eval(
            StepRef("checkpoints/m", "0123456789"),
            StepRef("tokenizer/t", "0123456789"),
            list(args.pop("tasks")),
            name="bad",
            **args,
        )

    state = bad(return_state=True)
    assert state.is_failed()
    with pytest.raises(ValueError, match=message):
        state.result()
    assert not Path(prefix).exists() or not any(Path(prefix).rglob("*.json"))


def test_harness_eval_of_a_tiny_model(on_shared):
    """A real run on the shared tiny model: score 8 instances of the local task, then Cached."""
    from tasks.core import flow

    @flow(name="harness-tiny")
    def tiny() -> dict:
        return _pipeline(max_eval_instances=8)

    state = tiny(return_state=True)
    assert state.is_completed(), state.message
    refs = state.result()
    results = json.loads(Path(refs["harness"].path, "results.json").read_text())
    entry = results["tasks"][TASK]
    assert entry["n"] == 8 and entry["documents"] == 300 and entry["num_fewshot"] == 0
    assert set(entry["metrics"]) == {"acc", "acc_norm"}
    for metric in entry["metrics"].values():
        assert 0.0 <= metric["value"] <= 1.0 and metric["stderr"] >= 0.0
    assert results["max_eval_instances"] == 8 and results["lm_eval_version"] == "0.4.11"
    metadata = refs["harness"].metadata
    assert metadata["tasks"][TASK] == {
        "acc": entry["metrics"]["acc"]["value"],
        "acc_norm": entry["metrics"]["acc_norm"]["value"],
        "n": 8,
    }

    rows = _artifact_rows(state.state_details.flow_run_id, "harness-harness-tiny")
    assert [(r["task"], r["metric"], r["n"]) for r in rows] == [
        (TASK, "acc", 8),
        (TASK, "acc_norm", 8),
    ]
    assert rows[0]["value"] == pytest.approx(entry["metrics"]["acc"]["value"])

    again = tiny(return_state=True)
    assert again.is_completed()
    assert again.result()["harness"] == refs["harness"]
    assert final_task_states(again.state_details.flow_run_id, 7) == ["Cached"] * 7


def test_the_task_folder_enters_the_identity_by_content_not_spelling(tmp_path, monkeypatch):
    """The bundled folder written four ways is one identity (an absolute path would make it
    depend on where the checkout lives); found by the attack review."""
    from tasks.lm.harness import harness_tasks

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path / "out"))
    absolute = str(REPO / "data" / "harness")
    spellings = ["data/harness", "./data/harness/", absolute, f"file://{absolute}"]
    folders = [harness_tasks(spelling) for spelling in spellings]
    assert all(folder == {**folders[0], "path": "data/harness"} for folder in folders)
    keys = {_plan(max_eval_instances=8, task_folder=f)["harness/harness-tiny"] for f in folders}
    assert len(keys) == 1


@pytest.mark.parametrize(
    "extra, message",
    [
        ("include: other.yaml\n", "`include:` is not supported"),
        ("dataset_path: csv\n", "dataset_path='csv'"),
        ("data_dir: /etc\n", "local tasks read JSON files of their folder"),
    ],
    ids=["include", "csv", "data-dir"],
)
def test_a_task_reading_files_outside_its_digest_is_refused(tmp_path, extra, message):
    """Only the folder's own YAML and JSON files are in the digest: a task that reads other
    files (include, another builder, data_dir) could change without re-keying the step."""
    import yaml

    from tasks.lm.harness import HarnessTaskError, harness_tasks

    folder = tmp_path / "tasks"
    folder.mkdir()
    config = yaml.safe_load((REPO / "data" / "harness" / "kjv_completion.yaml").read_text())
    config.update(yaml.safe_load(extra))
    (folder / "kjv_completion.yaml").write_text(yaml.safe_dump(config))
    (folder / "kjv_completion.jsonl").write_bytes(
        (REPO / "data" / "harness" / "kjv_completion.jsonl").read_bytes()
    )
    with pytest.raises(HarnessTaskError, match=message):
        _plan(max_eval_instances=8, task_folder=harness_tasks(str(folder)))


def test_harness_eval_with_few_shot_examples(on_shared):
    """num_fewshot > 0 reaches lm-eval: its own report (not our echo of the argument) says
    2-shot. The task has only a test split, from which lm-eval draws the examples."""
    from tasks.core import flow
    from tasks.lm.harness import harness_eval, harness_tasks
    from tests.helpers.tiny import tiny_base

    @flow(name="harness-fewshot")
    def fewshot():
        base = tiny_base()
        return harness_eval(
            base["model"],
            base["tokenizer"],
            [TASK],
            name="harness-fewshot",
            task_folder=harness_tasks(),
            max_eval_instances=4,
            num_fewshot=2,
        )

    ref = fewshot()
    results = json.loads(Path(ref.path, "results.json").read_text())
    entry = results["tasks"][TASK]
    assert entry["num_fewshot"] == 2 and entry["n"] == 4, entry
    assert set(entry["metrics"]) == {"acc", "acc_norm"}
    assert all(0.0 <= m["value"] <= 1.0 for m in entry["metrics"].values())
