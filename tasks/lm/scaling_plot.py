"""The picture of a scaling analysis (`analyze_scaling`'s `scaling.png`) and its publication as
Prefect artifacts: a view of the fits, kept apart from the fitting so that matplotlib is
read only where a picture is drawn."""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

from tasks.lm import scaling_fit as fit

ANALYSIS_FILE = "analysis.json"
PLOT_FILE = "scaling.png"


def plot_scaling(analysis: Mapping[str, Any], title: str) -> bytes:
    """The picture as PNG bytes: loss against N per budget with the fitted parabolas and their
    minima (hollow: outside the sampled sizes), and the frontier N_opt(C), D_opt(C)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker
    import numpy as np

    fits = analysis["budgets"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=100)
    colors = plt.cm.viridis(np.linspace(0.0, 0.85, max(len(fits), 1)))
    for color, budget in zip(colors, fits):
        params = np.asarray(budget["params"], float)
        lo, hi = np.log(params.min()), np.log(params.max())
        pad = 0.25 * (hi - lo)
        curve = np.exp(np.linspace(lo - pad, hi + pad, 200))
        label = f"C={budget['budget']:.3g}"
        left.plot(params, budget["losses"], "o", color=color, label=label)
        left.plot(curve, fit.parabola(budget["coefficients"], curve), "-", color=color, lw=1)
        if budget["status"] == fit.NO_MINIMUM:
            left.plot([], [], " ", label=f"  {label}: no minimum")
        elif budget["params_opt"] is not None:
            inside = budget["status"] == fit.MINIMUM
            left.plot(
                budget["params_opt"],
                budget["loss_opt"],
                "*",
                ms=14,
                color=color,
                markerfacecolor=color if inside else "none",
            )
    left.set_xscale("log")
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # no overlapping labels
    left.set_xlabel("parameters N")
    left.set_ylabel("final validation loss (nats/token)")
    left.set_title(f"{title}: isoflop curves (star: fitted minimum)")
    left.legend(fontsize=8)

    with_min = [b for b in fits if b["params_opt"] is not None]
    frontier = analysis["frontier"]
    used = set(frontier["budgets"]) if frontier else set()
    for b in with_min:
        face = "tab:blue" if b["budget"] in used else "none"
        right.plot(b["budget"], b["params_opt"], "o", color="tab:blue", markerfacecolor=face)
        face = "tab:orange" if b["budget"] in used else "none"
        right.plot(b["budget"], b["tokens_opt"], "s", color="tab:orange", markerfacecolor=face)
    if frontier:
        budgets = np.asarray(frontier["budgets"], float)
        span = np.geomspace(budgets.min() / 3, budgets.max() * 3, 50)
        for key, color, name in (("params", "tab:blue", "N"), ("tokens", "tab:orange", "D")):
            law = frontier[key]
            right.plot(
                span,
                fit.power_law(law, span),
                "-",
                color=color,
                label=f"{name}_opt = {law['coefficient']:.3g} C^{law['exponent']:.3f}",
            )
        right.legend(fontsize=8)
    else:
        right.text(
            0.02,
            0.5,
            "no frontier:\n" + str(analysis["frontier_error"])[:200],
            transform=right.transAxes,
            fontsize=8,
            wrap=True,
        )
    right.set_xscale("log")
    right.set_yscale("log")
    for axis in (right.xaxis, right.yaxis):
        axis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    right.set_xlabel("compute C = 6ND (FLOPs)")
    right.set_ylabel("N_opt (circles), D_opt (squares)")
    right.set_title("compute-optimal frontier (hollow: not fitted)")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def publish_scaling(
    picture: bytes, analysis: Mapping[str, Any], name: str, output_path: str
) -> None:
    """The picture (markdown with the PNG inline, as the loss curve is) and the optima as keyed
    Prefect artifacts; a view only, never fails the step."""
    from tasks.core import artifacts
    from tasks.lm.report import publish_picture, url_of

    if not artifacts.in_task_run():
        return
    where = artifacts.output_url() or url_of(output_path)
    publish_picture(
        artifacts.key("scaling", name),
        f"Scaling laws: {name}",
        picture,
        f"PNG: `{where}/{PLOT_FILE}`, fits: `{where}/{ANALYSIS_FILE}`",
        f"isoflop curves and compute-optimal frontier of {name}",
    )
    artifacts.publish_table(
        artifacts.key("scaling-optima", name),
        [
            {k: b[k] for k in ("budget", "status", "params_opt", "tokens_opt", "loss_opt")}
            for b in analysis["budgets"]
        ],
        f"per-budget optima of {name} ({where})",
    )
