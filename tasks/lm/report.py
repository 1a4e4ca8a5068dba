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


def plot_loss(rows: list[dict[str, Any]], title: str, eval_label: str = "validation loss") -> bytes:
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
        ax.plot(*zip(*evals), "o-", label=eval_label)
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
    from tasks.core import artifacts

    return artifacts.url_of(path if "://" in path else os.path.abspath(path))


def publish_training_report(
    metrics_path: str, output_path: str, name: str, eval_subset: int | None = None
) -> dict[str, Any]:
    """Read the metrics (any fsspec URL), write `loss.png` into `output_path` (any fsspec URL)
    and publish the picture and the final metrics as keyed Prefect artifacts
    (`loss-curve-<name>`, `metrics-<name>`). `eval_subset`: the number of validation sequences
    the in-training evaluation scored, when it was not the whole split; the figures then say
    so (the whole split's loss is `evaluate`'s)."""
    from tasks.core import artifacts

    rows = read_metrics(metrics_path)
    final = final_metrics(rows)
    label = "validation loss" if not eval_subset else f"validation loss (first {eval_subset} seq.)"
    png = f"{output_path.rstrip('/')}/loss.png"
    picture = plot_loss(rows, name, label)
    with fsspec.open(png, "wb") as handle:
        handle.write(picture)
    if eval_subset:
        final = {
            (f"{k} (first {eval_subset} sequences)" if k.startswith("eval/") else k): v
            for k, v in final.items()
        }
    if not artifacts.in_task_run():
        return final
    where = artifacts.output_url() or url_of(output_path)
    publish_picture(
        artifacts.key("loss-curve", name),
        f"Loss curve: {name}",
        picture,
        f"PNG: `{where}/loss.png`",
        f"training loss curve of {name}",
    )
    artifacts.publish_table(
        artifacts.key("metrics", name),
        [{"metric": k, "value": v} for k, v in final.items()],
        f"final training metrics of {name} ({where})",
    )
    return final


def progress_reporter(name: str, total_steps: int, tokens_per_step: int):
    """What a user watching a long run sees: a keyed Prefect progress artifact, and a line in
    the task run's log about every tenth of the run (at most every 30 s, at least every
    5 min) with step, loss, tokens/s and ETA. No-op outside a task run."""
    import time

    from tasks.core import artifacts

    if not artifacts.in_task_run():
        return None
    try:
        from prefect import get_run_logger
        from prefect.artifacts import create_progress_artifact, update_progress_artifact

        run_logger = get_run_logger()
        artifact_id = create_progress_artifact(
            progress=0.0,
            key=artifacts.key("progress", name),
            description=f"training progress of {name}",
        )
    except Exception as exc:  # the UI is a convenience; never fail training over it
        logger.warning("no progress artifact: %s", exc)
        return None
    every_steps = max(1, total_steps // 10)
    last = {"pct": -1.0, "logged_at": 0.0, "logged_step": None, "started": time.monotonic()}

    def report(step: int, metrics: Any) -> None:
        now = time.monotonic()
        pct = round(100.0 * min(step + 1, total_steps) / total_steps, 1)
        if pct - last["pct"] >= 5 or pct >= 100:
            last["pct"] = pct
            try:
                update_progress_artifact(artifact_id=artifact_id, progress=pct)
            except Exception as exc:
                logger.warning("progress artifact update failed: %s", exc)
        loss = metrics.get("train/loss") if hasattr(metrics, "get") else None
        if loss is None:
            return
        since = now - last["logged_at"]
        due = (step % every_steps == 0 and since >= 30) or since >= 300 or step + 1 >= total_steps
        if last["logged_step"] is None:
            due = True  # the first step: the compile is done, say so
        if not due or step == last["logged_step"]:  # levanter logs the last step twice
            return
        if last["logged_step"] is not None and step > last["logged_step"]:
            rate = (step - last["logged_step"]) / max(since, 1e-9)
        else:
            rate = 0.0
        eta = (total_steps - step - 1) / rate if rate else None
        run_logger.info(
            "%s: step %d/%d loss %.4f%s%s",
            name,
            step + 1,
            total_steps,
            float(loss),
            f", {rate * tokens_per_step:,.0f} tokens/s" if rate else "",
            f", ETA {eta:.0f} s" if eta is not None else "",
        )
        last["logged_at"], last["logged_step"] = now, step

    return report


def publish_picture(key: str, title: str, picture: bytes, footer: str, description: str) -> None:
    """A PNG as a keyed markdown artifact (inline, so the UI shows it without access to the
    bucket). A view only: a failure is logged, never raised (the files are the record)."""
    try:
        from prefect.artifacts import create_markdown_artifact

        encoded = base64.b64encode(picture).decode()
        create_markdown_artifact(
            markdown=f"### {title}\n\n![{title}](data:image/png;base64,{encoded})\n\n{footer}",
            key=key,
            description=description,
        )
    except Exception as exc:
        logger.warning("could not publish %s: %s", key, exc)
