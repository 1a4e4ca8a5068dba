"""Ray runner overhead per step: trivial steps executed, then the same steps cached, under
Prefect's thread runner and lmflows' Ray runner (a local Ray, 2 CPUs), same real server.

    python -m benches.ray_overhead [--steps 40]

Steps are independent and started by an `lmflows.flow` body, so both runners may overlap
them; the figure is wall time of the whole flow divided by the number of steps.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from benches.common import isolate_prefect, prefect_server, ratio_line

REPO = str(Path(__file__).resolve().parent.parent)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()
    isolate_prefect()
    os.environ.update({"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"})
    with prefect_server() as api_url:
        os.environ["PREFECT_API_URL"] = api_url
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        from prefect.task_runners import ThreadPoolTaskRunner

        from benches.experiments.trivial import trivial_steps
        from flows.runners import ray_task_runner

        timings = {}
        for label in ("threads", "ray"):
            os.environ["LMFLOWS_PREFIX"] = tempfile.mkdtemp(prefix=f"lmflows-bench-{label}-")
            runner = ThreadPoolTaskRunner()
            if label == "ray":  # started once, outside the timings; workers inherit the env
                import ray

                os.environ["PYTHONPATH"] = REPO
                ray.init(num_cpus=2, include_dashboard=False, address="local")
                runner = ray_task_runner(num_cpus=2)
            flow = trivial_steps.with_options(task_runner=runner)
            for phase in ("executed", "cached"):
                started = time.perf_counter()
                flow(args.steps)
                timings[(label, phase)] = (time.perf_counter() - started) / args.steps
        ray.shutdown()
        for phase in ("executed", "cached"):
            base, ray = timings[("threads", phase)], timings[("ray", phase)]
            print(
                f"{phase:>8} step: threads {base * 1000:7.1f} ms, ray {ray * 1000:7.1f} ms  "
                + ratio_line("ray / threads", ray, base, "report only")
            )


if __name__ == "__main__":
    main()
