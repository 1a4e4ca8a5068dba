"""Run every benchmark in turn (`make bench`); each prints ratios against its own baseline.

`benches.gpu_train_mfu` (train_lm vs plain JAX on a GPU) is not in the default list: add it
by name, `python -m benches.run_all benches.gpu_train_mfu`; without a GPU it skips in one line.
"""

from __future__ import annotations

import subprocess
import sys

BENCHES = [
    "benches.plan_scale",
    "benches.cli_wall",
    "benches.cached_chain",
    "benches.commit_cost",
    "benches.tokenize_throughput",
    "benches.dedup_throughput",
    "benches.train_step_time",
    "benches.ray_overhead",
    "benches.gcs_cached",
    "benches.resume_time",
]


def main() -> int:
    failed = 0
    for name in BENCHES + sys.argv[1:]:
        print(f"== {name}", flush=True)
        failed += subprocess.run([sys.executable, "-m", name]).returncode != 0
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
