"""evaluate: loss, perplexity and bits-per-byte of a trained model on validation caches,
with levanter's own `eval_lm` (the same evaluator the trainer uses). The model, the caches and
the output may be on any fsspec filesystem (gs:// in production)."""

from __future__ import annotations

import json
from typing import Any

import fsspec

from tasks.core import step
from tasks.core.gcs_auth import tensorstore_follows_emulator
from tasks.data.tokenizer_files import load_tokenizer
from tasks.lm import accelerators
from tasks.lm.checkpoints import final_checkpoint
from tasks.lm.files import write_json
from tasks.lm.model import check_tokenizer_matches


def _check(accelerator: Any = "cpu", **_: Any) -> None:
    accelerators.check(accelerator)


@step(
    # batch_size is identity: levanter evaluates max_eval_batches batches of it.
    hash_attrs=["model", "data", "tokenizer", "max_eval_batches", "batch_size"],
    operational=["accelerator"],
    name="eval/{name}",
    validate=_check,
    resources=accelerators.ray_options,
    isolate=True,
)
def evaluate(
    model: str,
    data: dict,
    tokenizer: str,
    name: str,
    max_eval_batches: int | None = None,
    batch_size: int = 32,
    accelerator: str = "cpu",
    *,
    output_path: str,
) -> dict:
    """Evaluate the final checkpoint of a `train_lm` output on tokenized validation splits.

    `data` maps dataset names to tokenize outputs; `tokenizer` is the one the model was
    trained with. `batch_size` is a hash attribute: with `max_eval_batches` it decides how
    many examples are scored. `accelerator` (what the call asks Ray for) is operational.
    """
    from tasks.lm.eval_run import score_splits

    tensorstore_follows_emulator()  # levanter's tensorstore writes, on a GCS emulator
    with fsspec.open(f"{model.rstrip('/')}/train_config.json", "r") as handle:
        trained = json.load(handle)
    check_tokenizer_matches(trained, load_tokenizer(tokenizer), model)
    results = score_splits(
        final_checkpoint(model),
        trained,
        tokenizer,
        data,
        batch_size=batch_size,
        max_eval_batches=max_eval_batches,
        output_path=output_path,
    )
    write_json(f"{output_path.rstrip('/')}/results.json", results)
    _publish(name, results)
    return results


def _publish(name: str, results: dict) -> None:
    """The results as a keyed table artifact (`eval-<name>`) and a line in the run log."""
    from tasks.core import artifacts

    rows = [{"dataset": k, **v} for k, v in results.items()]
    for row in rows:
        if row.get("loss") is not None:
            _run_log(
                f"{name}: {row['dataset']}: loss {row['loss']:.4f}, perplexity "
                f"{row['perplexity']:.2f}, bits/byte {row.get('bits_per_byte') or float('nan'):.4f}"
            )
    where = artifacts.output_url() or ""
    artifacts.publish_table(
        artifacts.key("eval", name), rows, f"evaluation of {name} (whole splits) {where}"
    )


def _run_log(line: str) -> None:
    try:
        from prefect import get_run_logger

        get_run_logger().info(line)
    except Exception:  # outside a run
        pass
