"""harness_eval: lm-evaluation-harness tasks on a trained model, through levanter's own harness
integration (`levanter.eval_harness`).

Why levanter's integration and not lm-eval's HF backend: it scores the levanter checkpoint with
JAX (the same model code that trained it, on CPU, GPU or TPU), while lm-eval's `hf` model needs
torch, which lmflows does not install. levanter implements loglikelihood requests only (no
`loglikelihood_rolling`; generation through its own engine), so multiple-choice tasks are the
fit; the rest are refused by lm-eval when they run.

Tasks come from two places. Local tasks: lm-eval task YAMLs (plus their JSON-lines data) in a
folder, by default the bundled `data/harness/` (sentence completion on held-out King James
Bible chapters). The folder enters the identity as `harness_tasks(folder)`: its path and a
sha256 over its YAML and data files, so editing the task or its data re-keys the step, and a
run whose folder no longer matches the digest is refused. Hub tasks (any name in lm-eval's
registry, e.g. `hellaswag`) download their datasets at run time and need the network; a run of
local tasks only is kept offline.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

from tasks.core import step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.data.tokenizer_files import load_tokenizer
from tasks.lm import accelerators
from tasks.lm.harness_folder import (
    BUNDLED_TASKS,
    SCORED_OUTPUT_TYPES,
    HarnessTaskError,
    canonical_folder,
    digest,
    harness_tasks,
    read_folder,
    task_configs,
    write_local_tasks,
)
from tasks.lm.model import check_tokenizer_matches

# What this module offered before the task-folder code moved out; experiments and tests
# import them from here.
__all__ = [
    "BUNDLED_TASKS",
    "SCORED_OUTPUT_TYPES",
    "HarnessTaskError",
    "canonical_folder",
    "harness_eval",
    "harness_tasks",
    "reduce_results",
    "table_rows",
]

# Standard errors of means (acc, acc_norm) are closed-form; this only matters for metrics
# that lm-eval bootstraps. Fixed, so it is not an argument.
_BOOTSTRAP_ITERS = 1000


@functools.lru_cache(maxsize=1)
def _hub_task_names() -> frozenset[str]:
    """Every task and group lm-eval ships a YAML for (indexing takes ~7 s here: once a
    process, not once per planned call)."""
    from lm_eval.tasks import TaskManager

    return frozenset(TaskManager().all_tasks)


def _check_arguments(
    tasks: Any,
    task_folder: Any,
    max_eval_instances: Any,
    num_fewshot: Any,
    batch_size: Any,
) -> tuple[list[str], list[str], dict[str, tuple[str, dict]], dict[str, bytes]]:
    """(local task names, hub task names, local configs, folder files), or a HarnessTaskError
    naming the bad argument."""
    if not isinstance(tasks, list) or not tasks:
        raise HarnessTaskError(f"tasks must be a non-empty list of task names, not {tasks!r}")
    if not all(isinstance(t, str) and t for t in tasks) or len(set(tasks)) != len(tasks):
        raise HarnessTaskError(f"tasks must be distinct task names, not {tasks!r}")
    if max_eval_instances is not None and (
        isinstance(max_eval_instances, bool)
        or not isinstance(max_eval_instances, int)
        or max_eval_instances < 1
    ):
        raise HarnessTaskError(
            f"max_eval_instances must be a positive integer or None, not {max_eval_instances!r}"
        )
    if isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0:
        raise HarnessTaskError(f"num_fewshot must be an integer >= 0, not {num_fewshot!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise HarnessTaskError(f"batch_size must be a positive integer, not {batch_size!r}")
    files: dict[str, bytes] = {}
    configs: dict[str, tuple[str, dict]] = {}
    if task_folder is not None:
        if (
            not isinstance(task_folder, dict)
            or set(task_folder) != {"path", "sha256"}
            or not all(isinstance(v, str) for v in task_folder.values())
        ):
            raise HarnessTaskError(
                f"task_folder must be harness_tasks(FOLDER) ({{'path', 'sha256'}}), "
                f"not {task_folder!r}"
            )
        files = read_folder(task_folder["path"])
        if digest(files) != task_folder["sha256"]:
            raise HarnessTaskError(
                f"task folder {task_folder['path']!r} changed since its digest was taken "
                f"(task_folder sha256 {task_folder['sha256'][:12]}..., now "
                f"{digest(files)[:12]}...): pass harness_tasks({task_folder['path']!r})"
            )
        configs = task_configs(files)
    local = [t for t in tasks if t in configs]
    hub = [t for t in tasks if t not in configs]
    if hub:
        unknown = sorted(set(hub) - _hub_task_names())
        if unknown:
            where = (
                f"not in the task folder ({', '.join(sorted(configs))})"
                if configs
                else "no task_folder given (local tasks need task_folder=harness_tasks(FOLDER))"
            )
            raise HarnessTaskError(
                f"unknown harness task(s) {unknown}: {where}, and not in lm-eval's registry"
            )
    return local, hub, configs, files


def _check(
    tasks: Any = None,
    task_folder: Any = None,
    max_eval_instances: Any = None,
    num_fewshot: Any = 0,
    batch_size: Any = 32,
    accelerator: Any = "cpu",
    **_: Any,
) -> None:
    accelerators.check(accelerator)
    _check_arguments(tasks, task_folder, max_eval_instances, num_fewshot, batch_size)


@step(
    # Everything that changes the numbers: the model, its tokenizer, which tasks (and the
    # content of the local ones), how many instances of each, and the shots. levanter fixes
    # the few-shot sampling seed and the RNG at 0, so there is no seed to vary.
    hash_attrs=["model", "tokenizer", "tasks", "task_folder", "max_eval_instances", "num_fewshot"],
    # batch_size only changes how requests are packed into batches.
    operational=["batch_size", "accelerator"],
    name="harness/{name}",
    validate=_check,
    resources=accelerators.ray_options,
    isolate=True,
)
def harness_eval(
    model: str,
    tokenizer: str,
    tasks: list[str],
    name: str,
    task_folder: dict | None = None,
    max_eval_instances: int | None = None,
    num_fewshot: int = 0,
    batch_size: int = 32,
    accelerator: str = "cpu",
    *,
    output_path: str,
) -> dict:
    """Run lm-evaluation-harness `tasks` on the final checkpoint of a `train_lm` output.

    `task_folder` is `harness_tasks(FOLDER)` when any task is local; other names are lm-eval
    registry tasks (network). `max_eval_instances` is lm-eval's `limit` (the first N
    documents of each task; None: all). Writes `results.json` (per task: metrics with value
    and stderr, instances scored) and publishes a keyed table artifact `harness-<name>`.
    """
    import jax

    from tasks.lm.checkpoints import final_checkpoint
    from tasks.lm.files import write_json
    from tasks.lm.root_logging import restored_root_logging

    local, hub, configs, files = _check_arguments(
        tasks, task_folder, max_eval_instances, num_fewshot, batch_size
    )
    tensorstore_follows_emulator()  # levanter reads the checkpoint with tensorstore
    with fsspec.open(f"{model.rstrip('/')}/train_config.json", "r") as handle:
        trained = json.load(handle)
    check_tokenizer_matches(trained, load_tokenizer(tokenizer), model)
    checkpoint = final_checkpoint(model)
    work = tempfile.mkdtemp(prefix="lmflows-harness-")
    try:
        task_dir = os.path.join(work, "tasks")
        write_local_tasks(task_dir, {t: configs[t] for t in local}, files, work)
        with restored_root_logging(), _offline(not hub):
            report = _run(
                trained,
                checkpoint,
                tokenizer,
                local + hub,
                task_dir,
                include_defaults=bool(hub),
                max_eval_instances=max_eval_instances,
                num_fewshot=num_fewshot,
                batch_size=batch_size,
                log_dir=os.path.join(work, "logs"),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = reduce_results(report)
    results.update(
        {
            "checkpoint": checkpoint.rstrip("/").rsplit("/", 1)[-1],
            "max_eval_instances": max_eval_instances,
            "num_fewshot": num_fewshot,
            "task_folder": task_folder,
            "lm_eval_version": _lm_eval_version(),
            "devices": jax.device_count(),
        }
    )
    write_json(f"{output_path.rstrip('/')}/results.json", results)
    rows = table_rows(results)
    _publish(name, rows)
    return {
        "tasks": {
            task: {**{m: v["value"] for m, v in entry["metrics"].items()}, "n": entry["n"]}
            for task, entry in results["tasks"].items()
        },
        "max_eval_instances": max_eval_instances,
        "num_fewshot": num_fewshot,
    }


@contextlib.contextmanager
def _offline(offline: bool) -> Iterator[None]:
    """Local tasks only: nothing may try the network. `datasets` and `huggingface_hub` read
    their offline switches when imported, so the module constants are set too, and everything
    is put back afterwards (other steps in this process may need the hub)."""
    if not offline:
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved_env = {k: os.environ.get(k) for k in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")}
    saved = [
        (module, attr, getattr(module, attr))
        for module, attr in (
            (datasets.config, "HF_HUB_OFFLINE"),
            (datasets.config, "HF_DATASETS_OFFLINE"),
            (huggingface_hub.constants, "HF_HUB_OFFLINE"),
        )
        if hasattr(module, attr)
    ]
    os.environ.update({k: "1" for k in saved_env})
    for module, attr, _ in saved:
        setattr(module, attr, True)
    try:
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _run(
    trained: dict,
    checkpoint: str,
    tokenizer: str,
    tasks: list[str],
    task_dir: str,
    *,
    include_defaults: bool,
    max_eval_instances: int | None,
    num_fewshot: int,
    batch_size: int,
    log_dir: str,
) -> dict:
    """levanter's `run_lm_eval_harness` on the checkpoint, loaded as levanter's
    `run_eval_harness_main` loads one (that function also writes a results file into the
    working directory and prints the report, so its body is followed here instead)."""

    import equinox as eqx
    import haliax as hax
    import jax
    import jmp
    from haliax.partitioning import round_axis_for_partitioning
    from levanter.checkpoint import load_checkpoint
    from levanter.distributed import RayConfig
    from levanter.eval_harness import run_lm_eval_harness
    from levanter.tracker import NoopConfig
    from levanter.trainer import TrainerConfig
    from levanter.utils.jax_utils import use_cpu_device
    from levanter.utils.tree_utils import inference_mode

    from tasks.lm.model import llama_config

    hf_tokenizer = load_tokenizer(tokenizer)
    model_config = llama_config(trained["model"], tokenizer, log_dir)
    devices = jax.device_count()
    trainer = TrainerConfig(
        require_accelerator=False,
        per_device_eval_parallelism=max(1, -(-batch_size // devices)),
        mp=jmp.get_policy("f32"),
        ray=RayConfig(auto_start_cluster=False),
        tracker=NoopConfig(),
        id="harness",
        log_dir=Path(log_dir),
    )
    trainer.initialize()
    harness_config = _local_harness_config(
        tasks, task_dir, include_defaults, max_eval_instances, num_fewshot
    )
    with trainer.use_device_mesh(), hax.axis_mapping(trainer.parameter_axis_mapping):
        vocab = round_axis_for_partitioning(
            hax.Axis("vocab", trained["vocab_size"]), trainer.compute_axis_mapping
        )
        with use_cpu_device():
            lm = eqx.filter_eval_shape(model_config.build, vocab, key=jax.random.PRNGKey(0))
            lm = load_checkpoint(lm, checkpoint, subpath="model")
        lm = inference_mode(hax.shard(lm, trainer.parameter_axis_mapping), True)
        report = run_lm_eval_harness(
            harness_config,
            lm,
            hf_tokenizer,
            trainer.EvalBatch,
            axis_resources=trainer.compute_axis_mapping,
            mp=trainer.mp,
        )
    if report is None:  # only process 0 gets the report; lmflows runs one process a step
        raise RuntimeError("levanter's harness returned no report on this process")
    return report


def _local_harness_config(
    tasks: list[str],
    task_dir: str,
    include_defaults: bool,
    max_eval_instances: int | None,
    num_fewshot: int,
):
    """levanter's LmEvalHarnessConfig, resolving task names with a TaskManager that also
    indexes `task_dir` (levanter's own `to_task_dict` builds `TaskManager()` without an
    include path, so local tasks would be unknown to it)."""
    import dataclasses

    from levanter.eval_harness import LmEvalHarnessConfig

    @dataclasses.dataclass(frozen=True)
    class LocalTasksHarnessConfig(LmEvalHarnessConfig):
        task_dir: str = ""
        include_defaults: bool = False
        num_fewshot: int = 0

        def to_task_dict(self) -> dict:
            from lm_eval.tasks import TaskManager, get_task_dict

            manager = TaskManager(
                include_path=self.task_dir, include_defaults=self.include_defaults
            )
            task_dict = get_task_dict(list(self.task_spec), manager)
            _set_fewshot(task_dict, self.num_fewshot)
            return task_dict

    return LocalTasksHarnessConfig(
        task_spec=list(tasks),
        max_examples=max_eval_instances,
        bootstrap_iters=_BOOTSTRAP_ITERS,
        task_dir=task_dir,
        include_defaults=include_defaults,
        num_fewshot=num_fewshot,
    )


def _set_fewshot(task_dict: dict, num_fewshot: int) -> None:
    """The shots of every task in a (nested) task dict, as lm-eval's `simple_evaluate` sets
    them (levanter calls `evaluator.evaluate`, which does not)."""
    for value in task_dict.values():
        if isinstance(value, dict):
            _set_fewshot(value, num_fewshot)
        else:
            value.set_config(key="num_fewshot", value=num_fewshot)


def _number(value: Any) -> float | None:
    """A JSON-safe metric value: finite floats; "N/A", NaN and infinities become None."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def reduce_results(report: dict) -> dict:
    """lm-eval's report reduced to JSON-safe values: per task, each metric's value and
    standard error, and the instances scored (`n`) out of the task's documents."""
    samples = report.get("n-samples", {})
    shots = report.get("n-shot", {})
    versions = report.get("versions", {})
    out: dict[str, Any] = {"tasks": {}}
    for task, values in report.get("results", {}).items():
        metrics: dict[str, dict] = {}
        for key, value in values.items():
            if key == "alias" or "_stderr," in key:
                continue
            metric, _, filter_name = key.partition(",")
            label = metric if filter_name in ("", "none") else f"{metric}/{filter_name}"
            metrics[label] = {
                "value": _number(value),
                "stderr": _number(values.get(f"{metric}_stderr,{filter_name}")),
            }
        counts = samples.get(task, {})
        out["tasks"][task] = {
            "metrics": metrics,
            "n": counts.get("effective"),
            "documents": counts.get("original"),
            "num_fewshot": shots.get(task),
            "version": _number(versions.get(task)),
        }
    return out


def table_rows(results: dict) -> list[dict]:
    """One row per task and metric: task, metric, value, stderr, n."""
    return [
        {"task": task, "metric": metric, "value": v["value"], "stderr": v["stderr"], "n": e["n"]}
        for task, e in sorted(results["tasks"].items())
        for metric, v in sorted(e["metrics"].items())
    ]


def _publish(name: str, rows: list[dict]) -> None:
    """The rows as a keyed table artifact (`harness-<name>`) and lines in the run log."""
    from tasks.core import artifacts

    for row in rows:
        value = "n/a" if row["value"] is None else f"{row['value']:.4f}"
        stderr = "" if row["stderr"] is None else f" ± {row['stderr']:.4f}"
        _run_log(f"{name}: {row['task']} {row['metric']} {value}{stderr} (n={row['n']})")
    where = artifacts.output_url() or ""
    artifacts.publish_table(
        artifacts.key("harness", name), rows, f"lm-eval harness tasks of {name} {where}"
    )


def _lm_eval_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return None


def _run_log(line: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().info(line)
    except Exception:  # outside a run
        pass
