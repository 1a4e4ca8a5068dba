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
