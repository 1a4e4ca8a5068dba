"""evaluate: loss, perplexity and bits-per-byte of a trained model on validation caches,
with levanter's own `eval_lm` (the same evaluator the trainer uses)."""

from __future__ import annotations

import json
import math
import os

from tasks.core import step


def _final_checkpoint(model: str) -> str:
    root = os.path.join(model, "checkpoints")
    steps = sorted((int(d.split("-", 1)[1]), d) for d in os.listdir(root) if d.startswith("step-"))
    if not steps:
        raise FileNotFoundError(f"no levanter checkpoint under {root}")
    return os.path.join(root, steps[-1][1])


@step(
    # batch_size is identity: levanter evaluates max_eval_batches batches of it.
    hash_attrs=["model", "data", "tokenizer", "max_eval_batches", "batch_size"],
    name="eval/{name}",
)
def evaluate(
    model: str,
    data: dict,
    tokenizer: str,
    name: str,
    max_eval_batches: int | None = None,
    batch_size: int = 32,
    *,
    output_path: str,
) -> dict:
    """Evaluate the final checkpoint of a `train_lm` output on tokenized validation splits.

    `data` maps dataset names to tokenize outputs; `tokenizer` is the one the model was
    trained with. `batch_size` is a hash attribute: with `max_eval_batches` it decides how
    many examples are scored.
    """
    import jmp
    import levanter.main.eval_lm as levanter_eval
    from levanter.data.text import LMMixtureDatasetConfig, UrlDatasetSourceConfig
    from levanter.distributed import RayConfig
    from levanter.trainer import TrainerConfig

    from tasks.lm.root_logging import restored_root_logging
    from tasks.lm.tracker import JsonlTrackerConfig
    from tasks.train import llama_config

    with open(os.path.join(model, "train_config.json")) as handle:
        trained = json.load(handle)
    os.makedirs(output_path, exist_ok=True)
    metrics_path = os.path.join(output_path, "metrics.jsonl")
    config = levanter_eval.EvalLmConfig(
        checkpoint_path=_final_checkpoint(model),
        model=llama_config(
            **trained["model"], tokenizer=tokenizer, reference=os.path.join(model, "hf_reference")
        ),
        data=LMMixtureDatasetConfig(
            tokenizer=tokenizer,
            cache_dir=None,
            configs={key: UrlDatasetSourceConfig(cache_dir=path) for key, path in data.items()},
            train_weights={key: 1.0 for key in data},
        ),
        trainer=TrainerConfig(
            require_accelerator=False,
            per_device_eval_parallelism=-1,
            train_batch_size=batch_size,
            max_eval_batches=max_eval_batches,
            mp=jmp.get_policy("f32"),
            ray=RayConfig(auto_start_cluster=False),
            tracker=JsonlTrackerConfig(path=metrics_path),
            id="eval",
            log_dir=__import__("pathlib").Path(output_path) / "logs",
        ),
    )
    with restored_root_logging():
        levanter_eval.main(config)
    with open(metrics_path) as handle:
        logged = {}
        for line in handle:
            logged.update(json.loads(line))
    results = {"all": _summary(logged, "eval")}
    for key in data:
        results[key] = _summary(logged, f"eval/{key}")
    with open(os.path.join(output_path, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    _publish(name, results)
    return results


def _summary(logged: dict, prefix: str) -> dict:
    loss = logged.get(f"{prefix}/loss")
    if loss is None:
        return {}
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": logged.get(f"{prefix}/bpb"),
    }


def _publish(name: str, results: dict) -> None:
    try:
        from prefect.artifacts import create_table_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is not None:
            create_table_artifact(
                table=[{"dataset": k, **v} for k, v in results.items()],
                description=f"evaluation of {name}",
            )
    except Exception:  # artifacts are a convenience; results.json is the record
        pass
