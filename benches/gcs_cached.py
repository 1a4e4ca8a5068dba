"""A cached re-run of the toy experiment per step: gs:// (fake-gcs-server on 127.0.0.1) vs
local disk, same real Prefect server. What a fully cached run costs on a bucket is one
commit-record read and the manifest's listing per step (no lease write).

    python -m benches.gcs_cached [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from benches.common import fake_gcs, isolate_prefect, prefect_server, ratio_line


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    isolate_prefect()
    with prefect_server() as api_url, fake_gcs("lmflows-bench"):
        os.environ["PREFECT_API_URL"] = api_url
        os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
        import fsspec

        from experiments.toy import toy_experiment
        from tasks.core import planning

        steps = len(_plan(planning, toy_experiment).steps)
        per_step = {}
        for label, prefix in (
            ("local", tempfile.mkdtemp(prefix="lmflows-bench-local-")),
            ("gs", "gs://lmflows-bench/toy"),
        ):
            os.environ["LMFLOWS_PREFIX"] = prefix
            fsspec.filesystem("gs").invalidate_cache()
            toy_experiment()  # executes and commits
            started = time.perf_counter()
            for _ in range(args.rounds):
                toy_experiment()
            per_step[label] = (time.perf_counter() - started) / args.rounds / steps
        print(
            f"cached toy ({steps} steps): local {per_step['local'] * 1000:.1f} ms/step, "
            f"gs {per_step['gs'] * 1000:.1f} ms/step  "
            + ratio_line("gs / local", per_step["gs"], per_step["local"], "report only")
        )


def _plan(planning, flow):
    with planning.planning() as plan:
        flow.fn()
    return plan


if __name__ == "__main__":
    main()
