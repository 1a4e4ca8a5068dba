"""The end-of-training report: a loss-curve PNG in the output and Prefect artifacts."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
from typing import Any

import fsspec

logger = logging.getLogger("lmflows.report")


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl at any fsspec URL."""
    with fsspec.open(path, "r") as handle:
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


def _curve(rows: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(step, value) sorted by step; a step logged again (a resumed attempt repeats the
    steps after its checkpoint) keeps its latest value."""
    points = {
        r["step"]: r[key] for r in rows if r.get(key) is not None and r.get("step") is not None
    }
    return sorted(points.items())


def plot_loss(rows: list[dict[str, Any]], title: str) -> bytes:
    """The loss curve as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = _curve(rows, "train/loss")
    evals = _curve(rows, "eval/loss")
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
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def url_of(path: str) -> str:
    """`path` as a URL: gs://... stays, a local path becomes file:///abs/path."""
    if "://" in path:
        return path
    return "file://" + os.path.abspath(path)


def publish_training_report(metrics_path: str, output_path: str, name: str) -> dict[str, Any]:
    """Read the metrics (any fsspec URL), write `loss.png` into `output_path` (any fsspec URL)
    and publish the picture and the final metrics as Prefect artifacts."""
    rows = read_metrics(metrics_path)
    final = final_metrics(rows)
    png = f"{output_path.rstrip('/')}/loss.png"
    picture = plot_loss(rows, name)
    with fsspec.open(png, "wb") as handle:
        handle.write(picture)
    try:
        from prefect.artifacts import create_markdown_artifact, create_table_artifact
        from prefect.context import TaskRunContext

        if TaskRunContext.get() is not None:
            encoded = base64.b64encode(picture).decode()
            create_markdown_artifact(
                markdown=f"### Loss curve: {name}\n\n![loss curve](data:image/png;base64,{encoded})"
                f"\n\nPNG: `{url_of(png)}`",
                description="training loss curve",
            )
            create_table_artifact(
                table=[{"metric": k, "value": v} for k, v in final.items()],
                description=f"final metrics of {name}",
            )
    except Exception as exc:  # artifacts are a convenience; the files are the record
        logger.warning("could not publish training artifacts: %s", exc)
    return final
