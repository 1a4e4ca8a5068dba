"""One run of levanter's `eval_lm` on a checkpoint, as `evaluate` and `chat_eval` both need it:
CPU/accelerator-agnostic trainer settings, levanter's console kept in its log, the logged
metrics read back and copied into the step's output (any fsspec URL)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import fsspec


def run_eval_lm(
    checkpoint: str,
    model_config: Any,
    data_config: Any,
    *,
    batch_size: int,
    max_eval_batches: int | None,
    run_id: str,
    work: str,
    output_path: str,
) -> dict[str, Any]:
    """Evaluate `checkpoint` with levanter's `eval_lm` and return every metric it logged
    (the last value of each). `work` is a local folder for levanter's logs and the metrics
    file, which is then copied to `output_path/metrics.jsonl`."""
    import jmp
    import levanter.main.eval_lm as levanter_eval
    from levanter.distributed import RayConfig
    from levanter.trainer import TrainerConfig

    from tasks.lm.root_logging import printed_to_log, restored_root_logging
    from tasks.lm.tracker import JsonlTrackerConfig

    metrics_path = os.path.join(work, "metrics.jsonl")
    config = levanter_eval.EvalLmConfig(
        checkpoint_path=checkpoint,
        model=model_config,
        data=data_config,
        trainer=TrainerConfig(
            require_accelerator=False,
            per_device_eval_parallelism=-1,
            train_batch_size=batch_size,
            max_eval_batches=max_eval_batches,
            mp=jmp.get_policy("f32"),
            ray=RayConfig(auto_start_cluster=False),
            tracker=JsonlTrackerConfig(path=metrics_path),
            id=run_id,
            log_dir=Path(work) / "logs",
        ),
    )
    with restored_root_logging(), printed_to_log():
        levanter_eval.main(config)
    logged: dict[str, Any] = {}
    with open(metrics_path) as handle:
        for line in handle:
            if line.strip():
                logged.update(json.loads(line))
    fs, root = fsspec.core.url_to_fs(output_path)
    fs.makedirs(root, exist_ok=True)
    fs.put_file(metrics_path, f"{root.rstrip('/')}/metrics.jsonl")
    return logged


def score_splits(
    checkpoint: str,
    trained: dict,
    tokenizer: str,
    data: dict[str, str],
    *,
    batch_size: int,
    max_eval_batches: int | None,
    output_path: str,
    work_prefix: str = "lmflows-eval-",
) -> dict[str, dict]:
    """Loss, perplexity and bits per byte of `checkpoint` (a model of the shape `trained`,
    as `train_config.json` records it) on tokenized validation splits: over all of `data`
    ("all") and per dataset. `evaluate` (a training's final checkpoint) and
    `evaluate_checkpoint` (one saved while training) both score this way.

    levanter's logs and the metrics file are written locally, then copied into the output
    (any fsspec URL). transformers cannot read a gs:// reference config, so the model's is
    rebuilt locally from its shape rather than read from hf_reference/."""
    import shutil
    import tempfile

    from levanter.data.text import LMMixtureDatasetConfig, UrlDatasetSourceConfig

    from tasks.lm.model import reference_model

    work = tempfile.mkdtemp(prefix=work_prefix)
    try:
        model_config = reference_model(trained["model"], tokenizer, trained["vocab_size"], work)
        data_config = LMMixtureDatasetConfig(
            tokenizer=tokenizer,
            cache_dir=None,
            configs={key: UrlDatasetSourceConfig(cache_dir=path) for key, path in data.items()},
            train_weights={key: 1.0 for key in data},
        )
        logged = run_eval_lm(
            checkpoint,
            model_config,
            data_config,
            batch_size=batch_size,
            max_eval_batches=max_eval_batches,
            run_id="eval",
            work=work,
            output_path=output_path,
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    results = {"all": summary(logged, "eval")}
    for key in data:
        results[key] = summary(logged, f"eval/{key}")
    return results


def summary(logged: dict, prefix: str) -> dict:
    """The loss levanter logged under `prefix`, as loss, perplexity and bits per byte."""
    import math

    loss = logged.get(f"{prefix}/loss")
    if loss is None:
        return {}
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": logged.get(f"{prefix}/bpb"),
    }
