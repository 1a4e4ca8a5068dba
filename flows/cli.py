"""`python -m flows`: run, plan and inspect experiments."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import threading
import warnings
from collections.abc import Sequence

# Prefect's client re-binds an async cache to each new event loop and says so every time.
warnings.filterwarnings("ignore", message="alru_cache detected event loop change")

USAGE_EPILOG = """examples:
  python -m flows run demo                 run experiments/demo.py end to end
  python -m flows plan demo                what would run, what is committed; writes nothing
  python -m flows run demo --force 'checkpoints/*'   re-execute matching steps only
  python -m flows run demo --only 'eval/*'  the matching steps and what they need, no more
  python -m flows run lr_sweep --param 'learning_rates=[0.001, 0.02]'
  python -m flows explain demo              why each step would run, and what it re-runs
  python -m flows status --prefix gs://bucket/lm
  python -m flows show tokenized/kjv-7ec78c5661   one output as JSON
  python -m flows gc [--delete]             outputs no experiment reaches
  python -m flows verify demo               are the demo's outputs intact?

Set LMFLOWS_DEBUG=1 to see the traceback behind an error line.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with its errors as one line like every other error (usage is in --help)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"lmflows: error: {message} (see python -m flows --help)\n")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="python -m flows",
        epilog=USAGE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run and inspect lmflows experiments.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add_common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--prefix",
            help="where outputs live (any fsspec URL); "
            "default: $LMFLOWS_PREFIX or ~/.lmflows/outputs",
        )

    def add_experiment(p: argparse.ArgumentParser) -> None:
        p.add_argument("experiment", help="module under experiments/ or path to a .py file")
        p.add_argument(
            "--param",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a flow parameter (repeatable); VALUE is parsed as JSON, else taken as a string",
        )

    def add_force(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--force",
            nargs="+",
            action="extend",  # `--force A --force B` forces both (each glob checked)
            default=[],
            metavar="GLOB",
            help="re-execute steps whose name matches (fnmatch), e.g. 'checkpoints/*'",
        )

    def add_only(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--only",
            nargs="+",
            action="extend",
            default=[],
            metavar="GLOB",
            help="only steps whose name or NAME-HASH matches (fnmatch), and the steps they "
            "need; nothing else runs",
        )

    run = sub.add_parser("run", help="run an experiment's flow")
    add_experiment(run)
    run.add_argument("--dry-run", action="store_true", help="same as `plan`")
    add_force(run)
    add_only(run)
    run.add_argument(
        "--runner",
        choices=["threads", "ray"],
        default="threads",
        help="threads: Prefect's thread pool (default); ray: prefect-ray's RayTaskRunner",
    )
    run.add_argument(
        "--ray-address",
        default=None,
        help="existing Ray cluster (e.g. ray://head:10001); default: start a local Ray",
    )
    run.add_argument(
        "--max-concurrent",
        type=int,
        default=None,
        metavar="N",
        help="at most N steps started and unfinished at once (default: no bound; also "
        "LMFLOWS_MAX_CONCURRENT)",
    )
    run.add_argument(
        "--server",
        choices=["auto", "ephemeral"],
        default="auto",
        help="auto: reuse or start a local Prefect server (default); "
        "ephemeral: Prefect's temporary per-process server",
    )
    add_common(run)

    plan = sub.add_parser("plan", help="show what a run would do; runs and writes nothing")
    add_experiment(plan)
    add_force(plan)
    add_only(plan)
    add_common(plan)

    explain = sub.add_parser(
        "explain",
        help="why steps would run: the attribute that changed and the steps it re-runs",
    )
    add_experiment(explain)
    explain.add_argument(
        "--step",
        nargs="+",
        action="extend",
        default=[],
        metavar="GLOB",
        help="only steps whose name matches any GLOB (fnmatch; repeatable; default: all)",
    )
    add_common(explain)

    status = sub.add_parser("status", help="committed steps under a prefix")
    add_common(status)

    show = sub.add_parser("show", help="one committed output as JSON (no code needed)")
    show.add_argument("name_with_hash", metavar="NAME-HASH")
    add_common(show)

    gc = sub.add_parser("gc", help="committed outputs that no experiment reaches")
    gc.add_argument("--delete", action="store_true", help="delete them (default: only list)")
    add_common(gc)

    verify = sub.add_parser(
        "verify", help="check committed outputs against their manifests; exit 1 if damaged"
    )
    verify.add_argument(
        "experiment", nargs="?", help="only the outputs of this experiment's plan (default: all)"
    )
    verify.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    add_common(verify)
    return parser


def _apply_prefix(prefix: str | None) -> str:
    from tasks.core import storage

    if prefix is not None:
        os.environ[storage.PREFIX_ENV] = storage.normalize_prefix(prefix)
    return storage.current_prefix()


def cmd_run(
    experiment: str,
    force: list[str],
    server: str,
    runner: str = "threads",
    ray_address: str | None = None,
    param_pairs: Sequence[str] = (),
    only: Sequence[str] = (),
) -> int:
    from flows.planned import plan_command
    from flows.server import ensure_server, ui_url
    from tasks.core import storage

    prefix = storage.current_prefix()
    flow, params, plan = plan_command(experiment, param_pairs, force, quiet=True, only=only)
    _check_writable(prefix)
    if runner == "threads":
        _start_fork_server_early(plan)
    api_url = ensure_server(server)
    if runner == "ray":
        from flows.loader import EXPERIMENT_FILE_MODULE
        from flows.runners import ray_task_runner, ship_by_value

        if api_url is None:
            print(
                "lmflows: warning: Ray without a Prefect server: every worker starts its own "
                "temporary server (~18 s a task)",
                file=sys.stderr,
            )
        else:
            os.environ["PREFECT_API_URL"] = api_url  # passed to the Ray workers
        if flow.fn.__module__.startswith(EXPERIMENT_FILE_MODULE):
            ship_by_value(flow.fn.__module__)
        flow = flow.with_options(task_runner=ray_task_runner(ray_address))
    if api_url:
        print(f"lmflows: watch it in the Prefect UI: {ui_url(api_url)}/runs")
    from flows.watch import ServerWatch, exit_now

    settlement = _Settlement(plan, prefix)
    watch = ServerWatch(api_url, settled=settlement.poll) if api_url else None
    try:
        if watch is not None:
            watch.__enter__()
        state = _run_flow(_with_steps_table(flow), api_url, params)
    except Exception:
        if watch is None or (watch.healthy() and not watch.lost):
            raise
        watch.mark_lost()
        state = None
    finally:
        if watch is not None:
            watch.__exit__()
    if watch is not None and (watch.lost or state is None or not watch.healthy()):
        watch.mark_lost()
        exit_now(settlement.final())
    assert state is not None
    flow_run_id = state.state_details.flow_run_id
    if api_url and flow_run_id:
        print(f"lmflows: flow run {ui_url(api_url)}/runs/flow-run/{flow_run_id}")
    print(f"lmflows: {flow.name} finished {state.type.value.lower()} (outputs under {prefix})")
    return 0 if state.is_completed() else 1


def _start_fork_server_early(plan) -> None:
    """Start the fork server of isolated bodies (tasks/core/fork_server.py) while the Prefect
    server starts and the flow begins, when a step that will execute needs it: its imports
    (levanter: seconds) then overlap with them instead of delaying the first body."""
    from tasks.core import fork_server, isolation

    def start() -> None:
        with contextlib.suppress(Exception):  # the first body starts it (or a Python) instead
            plan.check_status()
            if plan.runs_isolated_bodies():
                fork_server.prewarm(isolation.child_environment())

    threading.Thread(target=start, daemon=True, name="lmflows-fork-server-start").start()


class _Settlement:
    """What storage says about a run whose server went away. A forced step counts only once
    its commit record changed (its old commit is not this run's work)."""

    def __init__(self, plan, prefix: str) -> None:
        self.plan, self.prefix = plan, prefix
        self.before = {
            key: _commit_bytes(key, prefix) for key, item in plan.steps.items() if item.forced
        }

    def committed(self) -> int:
        self.plan.check_status()
        return sum(
            item.status == "committed"
            and (key not in self.before or _commit_bytes(key, self.prefix) != self.before[key])
            for key, item in self.plan.steps.items()
        )

    def poll(self) -> int | None:
        """For the server watch: the exit code once every step is committed, else None."""
        return self.final() if self.committed() == len(self.plan.steps) else None

    def final(self) -> int:
        committed, total = self.committed(), len(self.plan.steps)
        print(
            f"lmflows: {committed} of {total} steps are committed under {self.prefix} "
            "(read from storage; the server saw only part of the run)",
            file=sys.stderr,
        )
        return 0 if committed == total else 1


def _commit_bytes(name_with_hash: str, prefix: str) -> bytes | None:
    from tasks.core import storage

    try:
        return storage.read_bytes(storage.meta_path(name_with_hash, storage.COMMIT_FILE, prefix))
    except OSError:
        return None


def _with_steps_table(flow):
    """A plain `prefect.flow` run from here still ends with its `steps-<flow>` table."""
    from tasks.core import schedule

    if getattr(flow.fn, "_lmflows_flow", False):
        return flow
    recorded = flow.with_options()
    recorded.fn = schedule.recording(flow.fn)
    return recorded


def _run_flow(flow, api_url: str | None, params: dict):
    """Run the flow against `api_url` (settings are read at import, so override them)."""
    with _unjoined_heartbeats():
        if not api_url:
            return flow(return_state=True, **params)
        from prefect.settings import PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            return flow(return_state=True, **params)


@contextlib.contextmanager
def _unjoined_heartbeats():
    """Flow-run heartbeats as Prefect's async engine sends them: not joined at the end.

    Prefect 3.9's sync engine joins its heartbeat thread when a flow run ends, and that thread
    sleeps in one-second steps: a fully cached run waited up to 1 s after its last step
    (measured: 0.96 s of a 2.3 s `run toy`). Heartbeats still go out while the run lasts (a
    killed run is still detected); the thread sees the stop flag within a second and exits by
    itself (a daemon: it never holds up the process)."""
    import inspect

    from prefect import flow_engine

    original = getattr(flow_engine, "_send_heartbeats", None)
    if original is None or "join_on_exit" not in inspect.signature(original).parameters:
        yield  # another Prefect: its own behaviour
        return

    def unjoined(engine, join_on_exit: bool = True):
        return original(engine, join_on_exit=False)

    flow_engine._send_heartbeats = unjoined
    try:
        yield
    finally:
        flow_engine._send_heartbeats = original


def _check_writable(prefix: str) -> None:
    """Before any step runs: the prefix can be written and its store can lease steps."""
    from tasks.core import storage, stores

    try:
        stores.store_for(prefix).check_leases(prefix)
    except stores.LeaseUnsupportedError as exc:
        raise storage.PrefixError(str(exc)) from None
    fs, path = storage.filesystem(prefix)
    try:
        fs.makedirs(path, exist_ok=True)
    except Exception as exc:
        raise storage.PrefixError(f"prefix {prefix} is not writable: {exc}") from exc


# After Ctrl-C the process exits within this many seconds even while steps are still running
# in the task runner's threads (their shutdown waits for them; a training step would hold
# the terminal for minutes). Their leases die with the process: the next run takes over.
CTRL_C_GRACE_S = 5.0


def _exit_soon_after_ctrl_c() -> None:
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return
    default = signal.getsignal(signal.SIGINT)
    if not callable(default):
        return

    def interrupted(signum, frame):
        timer = threading.Timer(CTRL_C_GRACE_S, _exit_interrupted)
        timer.daemon = True
        timer.start()
        default(signum, frame)  # KeyboardInterrupt: unwind what can unwind

    signal.signal(signal.SIGINT, interrupted)


def _exit_interrupted() -> None:
    print("lmflows: interrupted", file=sys.stderr, flush=True)
    os._exit(130)


def main(argv: Sequence[str] | None = None) -> int:
    """Every failure is one line on stderr and a non-zero exit: 2 for bad input (experiment,
    arguments, settings), 1 for a failed run or damage found, 130 for Ctrl-C. LMFLOWS_DEBUG=1
    shows the traceback too."""
    _exit_soon_after_ctrl_c()
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("lmflows: interrupted", file=sys.stderr, flush=True)
        return 130
    except Exception as exc:  # the last resort: still one line, never a traceback by default
        if os.environ.get("LMFLOWS_DEBUG"):
            raise
        detail = " ".join(str(exc).split())[:500]
        print(
            f"lmflows: error: {type(exc).__name__}: {detail} (LMFLOWS_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 1


def _main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from flows.loader import ExperimentError
    from flows.params import ParameterError
    from flows.planned import ArgumentError
    from flows.reports import cmd_explain, cmd_gc, cmd_plan, cmd_show, cmd_status, cmd_verify
    from flows.server import ServerError, server_port
    from tasks.core.gcs_auth import GcsAccessError, ensure_gcs_access
    from tasks.core.lease import LeaseSettingError, lease_seconds
    from tasks.core.outputs import OutputPathError
    from tasks.core.placement import PlacementError, infeasible_timeout
    from tasks.core.schedule import (
        MAX_CONCURRENT_ENV,
        ConcurrencySettingError,
        max_concurrent_setting,
    )
    from tasks.core.storage import PrefixError
    from tasks.core.stores import LeaseUnsupportedError

    try:
        if getattr(args, "max_concurrent", None) is not None:
            os.environ[MAX_CONCURRENT_ENV] = str(args.max_concurrent)
        lease_seconds()  # settings are checked once, before anything runs
        server_port()
        max_concurrent_setting()
        infeasible_timeout()
        # One line, not a hang, without access; only commands that write probe a write.
        writes = args.command == "gc" or (args.command == "run" and not args.dry_run)
        ensure_gcs_access(_apply_prefix(args.prefix), write=writes)
        if args.command == "status":
            return cmd_status()
        if args.command == "show":
            return cmd_show(args.name_with_hash)
        if args.command == "gc":
            return cmd_gc(args.delete)
        if args.command == "verify":
            return cmd_verify(args.experiment, args.param)
        if args.command == "explain":
            return cmd_explain(args.experiment, args.step, args.param)
        if args.command == "plan" or args.dry_run:
            return cmd_plan(args.experiment, args.force, args.param, args.only)
        return cmd_run(
            args.experiment,
            args.force,
            args.server,
            args.runner,
            args.ray_address,
            args.param,
            args.only,
        )
    except (
        ExperimentError,
        PrefixError,
        ArgumentError,
        ParameterError,
        LeaseSettingError,
        OutputPathError,
        ServerError,
        GcsAccessError,
        PlacementError,
        ConcurrencySettingError,
        LeaseUnsupportedError,
    ) as exc:
        if os.environ.get("LMFLOWS_DEBUG"):
            raise
        print(f"lmflows: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 2
