"""Local lm-eval task folders for `harness_eval`: a folder's task YAMLs and JSON-lines data,
the digest that puts their content into the step's identity (`harness_tasks(folder)`), the
checks that refuse what levanter's harness could not score before any model loads, and the
copy of the tasks a run reads (data files made absolute).

A folder enters the identity as its canonical path and a sha256 over its YAML and data files,
so editing a task or its data re-keys the step, and a run whose folder no longer matches the
digest is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import fsspec

BUNDLED_TASKS = "data/harness"
# The files of a task folder that define its tasks and data (README.md and make_task.py don't).
_TASK_SUFFIXES = (".yaml", ".yml")
_DATA_SUFFIXES = (".jsonl", ".json")


class HarnessTaskError(ValueError):
    """A task list, task folder or harness argument that cannot be evaluated."""


def _resolve(folder: str) -> str:
    """Relative local folders are relative to the lmflows checkout, like download's URLs."""
    from tasks.data.download import resolve_source

    return resolve_source(folder)


def read_folder(folder: str) -> dict[str, bytes]:
    """file name -> bytes of the task YAMLs and data files directly in `folder` (any fsspec
    URL)."""
    fs, root = fsspec.core.url_to_fs(_resolve(folder))
    if not fs.isdir(root):
        raise HarnessTaskError(f"harness task folder {folder!r} does not exist")
    files = {}
    for entry in sorted(fs.ls(root, detail=False)):
        base = entry.rstrip("/").rsplit("/", 1)[-1]
        if base.endswith(_TASK_SUFFIXES + _DATA_SUFFIXES) and fs.isfile(entry):
            files[base] = fs.cat_file(entry)
    if not any(name.endswith(_TASK_SUFFIXES) for name in files):
        raise HarnessTaskError(f"harness task folder {folder!r} holds no task YAML")
    return files


def digest(files: dict[str, bytes]) -> str:
    """sha256 over each file's name and sha256: a renamed file changes it as an edit does."""
    outer = hashlib.sha256()
    for name in sorted(files):
        outer.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return outer.hexdigest()


def harness_tasks(folder: str = BUNDLED_TASKS) -> dict[str, str]:
    """The `task_folder` argument of `harness_eval`: the folder and a digest of its content.

    Called where the flow is written (it reads the folder), so the content is part of the
    step's identity: a changed YAML or JSONL gives a new output instead of a stale cache hit.
    """
    return {"path": canonical_folder(folder), "sha256": digest(read_folder(folder))}


def canonical_folder(folder: str) -> str:
    """One spelling per folder, so the identity does not depend on how the path was written
    or where the checkout lives: a folder inside the checkout is relative to it
    (`data/harness`, also for `./data/harness/`, its absolute path or `file://` URL); others
    are normalised (no trailing `/`, no `.` segments)."""
    from tasks.data.download import REPO_ROOT

    if folder.startswith("file://"):
        folder = folder[len("file://") :]
    if "://" in folder:
        return folder.rstrip("/")
    absolute = Path(_resolve(folder)).resolve()
    if absolute.is_relative_to(REPO_ROOT):
        return absolute.relative_to(REPO_ROOT).as_posix()
    return absolute.as_posix()


def task_configs(files: dict[str, bytes]) -> dict[str, tuple[str, dict]]:
    """task name -> (YAML file name, parsed config) of every task YAML in a folder."""
    import yaml

    found: dict[str, tuple[str, dict]] = {}
    for name, content in files.items():
        if not name.endswith(_TASK_SUFFIXES):
            continue
        try:
            config = yaml.safe_load(content)
        except yaml.YAMLError as exc:
            # Local tasks are plain YAML: lm-eval's `!function` and `include:` need Python
            # files and other YAMLs beside them, which this step does not carry.
            raise HarnessTaskError(f"harness task {name}: not plain YAML ({exc})") from None
        if not isinstance(config, dict) or not isinstance(config.get("task"), str):
            raise HarnessTaskError(f"harness task {name}: needs a `task:` name")
        if config["task"] in found:
            raise HarnessTaskError(f"harness task {config['task']!r} is defined twice")
        # Everything a task reads must be in the folder's digest: its own YAML and the
        # json files its data_files name (rewritten to the folder at run time). `include:`,
        # other dataset builders and `data_dir` read files the digest does not cover.
        if "include" in config:
            raise HarnessTaskError(f"harness task {name}: `include:` is not supported here")
        if config.get("dataset_path") != "json" or "data_dir" in config:
            raise HarnessTaskError(
                f"harness task {name}: local tasks read JSON files of their folder "
                f"(`dataset_path: json` with `dataset_kwargs.data_files`), not "
                f"dataset_path={config.get('dataset_path')!r}"
            )
        _check_local_task(name, config, files)
        found[config["task"]] = (name, config)
    return found


# What levanter's harness model scores here: `loglikelihood_rolling` raises a bare
# NotImplementedError in it and `generate_until` fails with a TypeError on our models.
SCORED_OUTPUT_TYPES = ("multiple_choice", "loglikelihood")


def _check_local_task(name: str, config: dict, files: dict[str, bytes]) -> None:
    """What lm-eval would find only after the model loaded: an output type levanter cannot
    score, a split missing from `data_files`, a data file that is absent or empty."""
    output_type = config.get("output_type", "generate_until")  # lm-eval's default
    if output_type not in SCORED_OUTPUT_TYPES:
        raise HarnessTaskError(
            f"harness task {name}: output_type {output_type!r} cannot be scored here (levanter's"
            f" harness scores {' and '.join(SCORED_OUTPUT_TYPES)})"
        )
    data_files = (config.get("dataset_kwargs") or {}).get("data_files")
    if isinstance(data_files, str):
        data_files = {"train": data_files}  # the json builder's one-file form
    if not isinstance(data_files, dict) or not data_files:
        raise HarnessTaskError(f"harness task {name}: needs dataset_kwargs.data_files")
    for key in ("test_split", "validation_split", "fewshot_split", "training_split"):
        split = config.get(key)
        if split is not None and split not in data_files:
            raise HarnessTaskError(
                f"harness task {name}: {key} {split!r} is not a split of its data_files"
                f" ({', '.join(sorted(map(str, data_files)))})"
            )
    if config.get("test_split") is None and config.get("validation_split") is None:
        raise HarnessTaskError(f"harness task {name}: needs a test_split (or validation_split)")
    for split, names in data_files.items():
        for data_name in [names] if isinstance(names, str) else list(names or []):
            base = str(data_name).rsplit("/", 1)[-1]
            content = files.get(base)
            if content is None:
                raise HarnessTaskError(
                    f"harness task {name}: data file {data_name!r} ({split}) is not in its folder"
                )
            if not content.strip():
                raise HarnessTaskError(
                    f"harness task {name}: data file {data_name!r} ({split}) has no documents"
                )


def write_local_tasks(
    task_dir: str, configs: dict[str, tuple[str, dict]], files: dict[str, bytes], work: str
) -> None:
    """The local tasks' YAMLs and data in a temporary folder, with `data_files` made absolute
    (the `json` dataset builder resolves relative paths against the working directory) and
    the datasets cache kept in the step's temporary folder instead of ~/.cache."""
    import yaml

    os.makedirs(task_dir)
    for task, (yaml_name, config) in configs.items():
        config = json.loads(json.dumps(config))  # a copy
        kwargs = dict(config.get("dataset_kwargs") or {})
        data_files = kwargs.get("data_files")
        if config.get("dataset_path") == "json" and data_files is not None:
            kwargs["data_files"] = _absolute(data_files, task_dir, files, task)
            kwargs["cache_dir"] = os.path.join(work, "datasets-cache")
            config["dataset_kwargs"] = kwargs
        with open(os.path.join(task_dir, yaml_name), "w") as handle:
            yaml.safe_dump(config, handle, sort_keys=False)


def _absolute(data_files: Any, task_dir: str, files: dict[str, bytes], task: str) -> Any:
    if isinstance(data_files, dict):
        return {k: _absolute(v, task_dir, files, task) for k, v in data_files.items()}
    if isinstance(data_files, list):
        return [_absolute(v, task_dir, files, task) for v in data_files]
    if not isinstance(data_files, str) or data_files not in files:
        raise HarnessTaskError(
            f"harness task {task!r}: data file {data_files!r} is not a .jsonl/.json file of "
            "its task folder"
        )
    path = os.path.join(task_dir, data_files)
    if not os.path.exists(path):
        with open(path, "wb") as handle:
            handle.write(files[data_files])
    return path
