"""The end-of-training report: a loss-curve PNG in the output and Prefect artifacts."""

from __future__ import annotations

import base64
import json
import logging
import os
from typing import Any

logger = logging.getLogger("lmflows.report")


def read_metrics(path: str) -> list[dict[str, Any]]:
    with open(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def final_metrics(rows: list[dict[str, Any]]) -> dict[str, Any]:
    final: dict[str, Any] = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and value is not None and (key.startswith(("train/", "eval/"))):
                final[key] = value
    if rows:
        final["step"] = max(r.get("step") or 0 for r in rows)
    return final


def plot_loss(rows: list[dict[str, Any]], png_path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss") is not None]
    evals = [(r["step"], r["eval/loss"]) for r in rows if r.get("eval/loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="validation loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(png_path)
    plt.close(fig)


def publish_training_report(metrics_path: str, output_path: str, name: str) -> dict[str, Any]:
    rows = read_metrics(metrics_path)
    final = final_metrics(rows)
    png = os.path.join(output_path, "loss.png")
    plot_loss(rows, png, name)
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is not None:
            encoded = base64.b64encode(open(png, "rb").read()).decode()
            create_markdown_artifact(
                markdown=f"### Loss curve: {name}\n\n![loss curve](data:image/png;base64,{encoded})"
                f"\n\nPNG: `{png}`",
                description="training loss curve",
            )
            create_table_artifact(
                table=[{"metric": k, "value": v} for k, v in final.items()],
                description=f"final metrics of {name}",
            )
    except Exception as exc:  # artifacts are a convenience; the files are the record
        logger.warning("could not publish training artifacts: %s", exc)
    return final
