"""Scaling laws (experiments/isoflop.py, tasks/lm/scaling.py): the fit arithmetic on exactly
known curves, the refusals before anything runs, and one real tiny isoflop sweep (levanter on
CPU) through a flow: analysis, plot, artifact, the optimal model, and a cached re-run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tasks.lm import scaling_fit as fit
from tests.helpers.api import final_task_runs

# --- the arithmetic -------------------------------------------------------------------------


def _parabola(params, center, curvature=0.3, floor=3.1):
    return [curvature * (math.log(n) - math.log(center)) ** 2 + floor for n in params]


def test_a_parabola_in_log_n_is_recovered_with_its_vertex():
    params = [1e4, 3e4, 1e5, 3e5]
    got = fit.fit_isoflop(6e9, params, _parabola(params, center=5e4))
    c2, c1, c0 = got["coefficients"]
    x0 = math.log(5e4)
    assert c2 == pytest.approx(0.3) and c1 == pytest.approx(-0.6 * x0)
    assert c0 == pytest.approx(0.3 * x0 * x0 + 3.1)
    assert got["status"] == fit.MINIMUM
    assert got["params_opt"] == pytest.approx(5e4, rel=1e-9)
    assert got["tokens_opt"] == pytest.approx(6e9 / (6 * 5e4), rel=1e-9)
    assert got["loss_opt"] == pytest.approx(3.1, abs=1e-9)


def test_a_vertex_beyond_the_sampled_sizes_is_flagged():
    params = [1e4, 3e4, 1e5]
    got = fit.fit_isoflop(1e10, params, _parabola(params, center=5e5))
    assert got["status"] == fit.OUTSIDE
    assert got["params_opt"] == pytest.approx(5e5, rel=1e-6)
    far = fit.fit_isoflop(1e10, params, _parabola(params, center=1e8))  # 3 ranges out
    assert far["status"] == fit.NO_MINIMUM and far["params_opt"] is None


def test_a_parabola_opening_downwards_has_no_optimum():
    params = [1e4, 3e4, 1e5]
    got = fit.fit_isoflop(1e10, params, _parabola(params, center=3e4, curvature=-0.2))
    assert got["status"] == fit.NO_MINIMUM
    assert got["params_opt"] is None and got["tokens_opt"] is None and got["loss_opt"] is None
    line = fit.fit_isoflop(1e10, params, [5.0 - 0.1 * math.log(n) for n in params])
    assert line["status"] == fit.NO_MINIMUM  # a vertex at numerical infinity is none


def test_too_few_sizes_or_bad_numbers_are_refused():
    with pytest.raises(fit.ScalingFitError, match="at least 3 different sizes"):
        fit.fit_isoflop(1e10, [1e4, 1e4, 3e4], [4.0, 4.1, 3.9])  # a repeat is not a size
    with pytest.raises(fit.ScalingFitError, match="finite and positive"):
        fit.fit_isoflop(1e10, [1e4, -3e4, 1e5], [4.0, 4.1, 3.9])
    with pytest.raises(fit.ScalingFitError, match="losses must be finite"):
        fit.fit_isoflop(1e10, [1e4, 3e4, 1e5], [4.0, float("nan"), 3.9])
    with pytest.raises(fit.ScalingFitError, match="at least 2 different budgets"):
        fit.fit_power_law([1e10, 1e10], [1e4, 2e4])


def test_power_laws_of_the_frontier_are_recovered():
    k, a = 0.05, 0.52
    budgets = [1e9, 1e10, 1e11, 1e12]
    law = fit.fit_power_law(budgets, [k * c**a for c in budgets])
    assert law["exponent"] == pytest.approx(a) and law["coefficient"] == pytest.approx(k)
    assert fit.power_law(law, 1e13) == pytest.approx(k * 1e13**a)
    optima = []
    for c in budgets:  # exact parabolas whose vertices lie on the law
        n_opt = k * c**a
        params = [n_opt / 3, n_opt, n_opt * 2]
        optima.append(fit.fit_isoflop(c, params, _parabola(params, center=n_opt)))
    frontier = fit.fit_frontier(optima)
    assert frontier["budgets"] == budgets
    assert frontier["params"]["exponent"] == pytest.approx(a)
    assert frontier["params"]["coefficient"] == pytest.approx(k)
    assert frontier["tokens"]["exponent"] == pytest.approx(1 - a)  # D = C / (6 N)
    assert frontier["tokens"]["coefficient"] == pytest.approx(1 / (6 * k))


def test_the_frontier_uses_only_optima_inside_their_range_unless_asked():
    def at(budget, center, curvature=0.3):
        params = [1e4, 3e4, 1e5]
        return fit.fit_isoflop(budget, params, _parabola(params, center, curvature))

    optima = [at(1e9, 2e4), at(1e10, 5e5), at(1e11, 5e4, curvature=-1.0)]
    with pytest.raises(fit.ScalingFitError, match="left out.*1e.10.: 'outside_range'"):
        fit.fit_frontier(optima)
    frontier = fit.fit_frontier(optima, include_extrapolated=True)
    assert frontier["budgets"] == [1e9, 1e10]  # the budget without a minimum never counts


def test_steps_and_the_nearest_size():
    assert fit.train_steps(6e9, 1e4, 1000) == 100
    assert fit.train_steps(6e9, 1e4, 1e6 / 2.4) == 0  # 0.4 steps round down
    sizes = {"s": 1e4, "m": 4e4, "l": 1.6e5}
    assert fit.nearest_size(sizes, 1.9e4) == "s"  # log distance: 1.9x vs 2.1x
    assert fit.nearest_size(sizes, 2.1e4) == "m"
    assert fit.nearest_size(sizes, 2e4) == "s"  # a tie goes to the smaller model
    assert fit.nearest_size(sizes, 1e9) == "l"


# --- planning: refusals and identities, nothing trained ------------------------------------

TINY_SIZES = {
    "h8": dict(hidden_dim=8, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_dim=32),
    "h16": dict(hidden_dim=16, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_dim=64),
    "h32": dict(hidden_dim=32, num_layers=1, num_heads=2, num_kv_heads=2, intermediate_dim=128),
}


def test_params_are_levanters_count_of_the_model_it_builds():
    """N from the config equals the parameters of the model levanter initialises."""
    import haliax as hax
    import jax
    from levanter.models.llama import LlamaConfig
    from levanter.utils.jax_utils import parameter_count

    from tasks.lm.scaling import params_of

    arch = TINY_SIZES["h16"]
    config = LlamaConfig(seq_len=32, **arch)
    vocab = hax.Axis("vocab", 300)
    model = config.build(vocab, key=jax.random.PRNGKey(0))
    assert params_of(arch, 32, 300) == parameter_count(model) > 2 * 300 * 16


def _plan(experiment: str = "isoflop", **params) -> dict[str, str]:
    """step name -> NAME-HASH of the experiment planned with `params`."""
    from flows.loader import load_flow
    from flows.params import bind
    from tasks.core import planning

    flow = load_flow(experiment)
    with planning.planning() as plan:
        flow.fn(**bind(flow, {k: json.dumps(v) for k, v in params.items()}))
    return {item.ref.name: key for key, item in plan.steps.items()}


def test_one_more_budget_plans_only_its_runs_and_a_tiny_budget_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))
    two = _plan(budgets=[3e12, 1e13])
    three = _plan(budgets=[3e12, 1e13, 3e13])
    trainings = {n for n in two if n.startswith("checkpoints/")}
    assert len(trainings) == 10  # 2 budgets x 5 sizes
    new = {n for n in three if n.startswith("checkpoints/")} - trainings
    assert len(new) == 5 and all("-c3e13-" in n for n in new)
    assert all(three[n] == two[n] for n in two if not n.startswith(("scaling/", "optimal/")))
    assert two["scaling/isoflop-kjv"] != three["scaling/isoflop-kjv"]
    demo = _plan("demo")
    data = [n for n in demo if n.split("/")[0] in ("raw", "dedup", "tokenizer", "tokenized")]
    assert len(data) == 4 and all(two[n] == demo[n] for n in data)  # the demo's data steps
    with pytest.raises(ValueError, match=r"budget 3e\+10 with size 'd96'.*gives 1 train step"):
        _plan(budgets=[1e13, 3e10])


def test_analysis_arguments_are_checked_when_planned(tmp_path, monkeypatch):
    from tasks.core import StepRef, planning
    from tasks.lm.scaling import analyze_scaling, train_optimal

    monkeypatch.setenv("LMFLOWS_PREFIX", str(tmp_path))

    def runs(budgets, sizes):
        return [
            {"budget": b, "params": n, "tokens": 1000, "model": StepRef("checkpoints/x", "0" * 10)}
            for b in budgets
            for n in sizes
        ]

    with planning.planning():
        analyze_scaling(runs([1e9, 1e10], [10, 20, 30]), name="ok")
        with pytest.raises(ValueError, match="need at least 2"):
            analyze_scaling(runs([1e9], [10, 20, 30]), name="x")
        with pytest.raises(ValueError, match=r"budgets \{'1e\+10': 2\} have fewer than 3"):
            analyze_scaling(runs([1e9], [10, 20, 30]) + runs([1e10], [10, 20]), name="x")
        with pytest.raises(ValueError, match="has size N=20 twice"):
            analyze_scaling(runs([1e9, 1e10], [10, 20, 20, 30]), name="x")
        with pytest.raises(ValueError, match=r"runs\[0\].tokens=0"):
            analyze_scaling([{**runs([1e9], [1])[0], "tokens": 0}], name="x")
        analysis = StepRef("scaling/x", "0" * 10)
        with pytest.raises(ValueError, match="target_budget=-1"):
            train_optimal(
                analysis,
                -1.0,
                data={"kjv": analysis},
                tokenizer=analysis,
                name="x",
                sizes=TINY_SIZES,
            )
        with pytest.raises(
            ValueError, match=r"sizes\['odd'\]: hidden_dim must be a multiple of num_heads"
        ):
            train_optimal(
                analysis,
                1e12,
                data={"kjv": analysis},
                tokenizer=analysis,
                name="x",
                sizes={
                    "odd": {**TINY_SIZES["h8"], "hidden_dim": 30, "num_heads": 4, "num_kv_heads": 4}
                },
            )


# --- one real tiny sweep --------------------------------------------------------------------

REPO = Path(__file__).resolve().parent.parent
# Two budgets, three sizes (levanter on CPU, one KJV shard, 512-token vocabulary): sized so
# that each budget's losses have their minimum among the sampled sizes here (measured: vertex
# at N ~ 20k for both; at 3e10 it falls below h8 and is flagged `outside_range`, at 1.2e10 the
# curve has no minimum at all).
SWEEP = dict(
    budgets=[4e10, 6e10],
    sizes=TINY_SIZES,
    target_budget=5e10,
    vocab_size=512,
    validation_fraction=0.02,
    seq_len=32,
    batch_size=32,
    learning_rate=0.02,
)
TOKENS_PER_STEP = 32 * 32


def _task_states(flow_run_id) -> tuple[dict[str, str], dict]:
    """The states of a flow run's 12 task runs by name (once final), and its artifacts by key."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    runs = final_task_runs(flow_run_id, 12)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    return {r.name: r.state.name for r in runs}, {a.key: a for a in artifacts}


def test_a_tiny_isoflop_sweep_fits_plots_and_trains_the_predicted_size(prefix):
    import matplotlib.image

    from experiments.isoflop import isoflop_sweep
    from tasks.core import flow
    from tasks.lm.scaling import params_of

    @flow(name="isoflop-tiny")
    def tiny() -> dict:
        result = isoflop_sweep("isoflop-tiny", [str(REPO / "data/kjv/kjv-00.jsonl.gz")], **SWEEP)
        return {"analysis": result["analysis"], "optimal": result["optimal"]}

    state = tiny(return_state=True)
    assert state.is_completed(), state.message
    refs = state.result()
    out = Path(refs["analysis"].path)
    analysis = json.loads((out / "analysis.json").read_text())

    # the runs: what was planned, trained, and read back
    assert len(analysis["runs"]) == 6 and analysis["vocab_size"] == 512
    for run in analysis["runs"]:
        assert run["params"] == params_of(TINY_SIZES[run["size"]], 32, 512)
        assert run["tokens"] % (TOKENS_PER_STEP) == 0
        assert run["compute"] == pytest.approx(run["budget"], rel=0.3)  # whole steps
        assert run["final_step"] == run["tokens"] // (TOKENS_PER_STEP) - 1  # loss at the last step
        assert 2.0 < run["loss"] < math.log(512) + 0.5
        metrics = Path(prefix, run["model"], "metrics.jsonl").read_text().splitlines()
        evals = [row for row in map(json.loads, metrics) if row.get("eval/loss") is not None]
        assert run["loss"] == evals[-1]["eval/loss"]  # the final whole-split validation loss
    # each budget: a parabola through its three sizes, an optimum in range or flagged
    assert [b["budget"] for b in analysis["budgets"]] == SWEEP["budgets"]
    for budget in analysis["budgets"]:
        assert budget["sizes"] == ["h8", "h16", "h32"]
        assert budget["status"] in (fit.MINIMUM, fit.OUTSIDE, fit.NO_MINIMUM)
        fitted = fit.parabola(budget["coefficients"], budget["params"])
        np.testing.assert_allclose(fitted, budget["losses"], atol=1e-6)  # 3 points: exact
        if budget["status"] == fit.MINIMUM:
            assert min(budget["params"]) <= budget["params_opt"] <= max(budget["params"])
        if budget["params_opt"] is not None:
            assert 6 * budget["params_opt"] * budget["tokens_opt"] == pytest.approx(
                budget["budget"]
            )
    # sized so that both minima are inside here, hence a frontier of two budgets
    assert [b["status"] for b in analysis["budgets"]] == [fit.MINIMUM, fit.MINIMUM]
    frontier = analysis["frontier"]
    assert frontier["budgets"] == SWEEP["budgets"]
    assert frontier["params"]["exponent"] + frontier["tokens"]["exponent"] == pytest.approx(1)
    assert refs["analysis"].metadata["frontier"]["params"] == frontier["params"]

    picture = matplotlib.image.imread(out / "scaling.png")
    assert picture.shape[0] >= 300 and picture.shape[1] >= 600
    assert picture[..., :3].std() > 0.05  # not a blank canvas

    # the optimal model: the grid size nearest to the frontier's N_opt, trained to spend C
    optimal = json.loads(Path(refs["optimal"].path, "optimal.json").read_text())
    target = SWEEP["target_budget"]
    n_opt = fit.power_law(frontier["params"], target)
    assert optimal["predicted"]["params"] == pytest.approx(n_opt)
    assert optimal["within_fitted_budgets"]  # 5e10 lies between the two budgets
    assert optimal["predicted"]["tokens"] == pytest.approx(target / (6 * n_opt))
    candidates = {s: params_of(a, 32, 512) for s, a in TINY_SIZES.items()}
    chosen = optimal["chosen"]
    assert chosen["size"] == fit.nearest_size(candidates, n_opt)
    trained = json.loads(Path(refs["optimal"].path, "train_config.json").read_text())
    assert trained["model"] == {**TINY_SIZES[chosen["size"]], "seq_len": 32}
    assert chosen["num_train_steps"] == fit.train_steps(
        target, candidates[chosen["size"]], TOKENS_PER_STEP
    )
    assert refs["optimal"].metadata["num_train_steps"] == chosen["num_train_steps"]
    assert refs["optimal"].metadata["final"]["eval/loss"] > 0

    states, artifacts = _task_states(state.state_details.flow_run_id)
    scaling = artifacts["scaling-isoflop-tiny"]
    assert "data:image/png;base64," in scaling.data
    assert "scaling-optima-isoflop-tiny" in artifacts
    assert "loss-curve-isoflop-tiny-c5e10" in artifacts  # train_lm's report, inside train_optimal
    assert len(states) == 4 + 6 + 2 and set(states.values()) == {"Completed"}

    again = tiny(return_state=True)
    assert again.is_completed(), again.message
    states, _ = _task_states(again.state_details.flow_run_id)
    assert len(states) == 12 and set(states.values()) == {"Cached"}
