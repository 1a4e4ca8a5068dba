"""A lease outlives its first term by renewal alone (real processes). Concurrent runs,
SIGKILL takeover and lost leases, on every store, are in tests/test_store_contract.py."""

from __future__ import annotations

import json
import time
from pathlib import Path

from tasks.core import storage
from tests.helpers import steps
from tests.helpers.processes import start, wait_for


def log_lines(log: Path) -> list[str]:
    return [line.split()[0] for line in log.read_text().splitlines()] if log.exists() else []


def test_a_step_longer_than_several_leases_lives_on_renewal_alone(prefix, tmp_path):
    """Lease 2 s, step 7 s: only renewal keeps the second process waiting (the holder is a
    live local process, so nothing but an expired lease would let it take over)."""
    log = tmp_path / "calls.log"
    env = {"LMFLOWS_TEST_LOG": str(log), "LMFLOWS_LEASE_SECONDS": "2"}
    first = start(["chain", "4", "3"], {**env, "LMFLOWS_TEST_SLEEP": "7"})
    ref = steps.source.ref_for(4)
    lease_file = Path(storage.lease_path(ref.name_with_hash))
    wait_for(lease_file)
    second = start(["chain", "4", "3"], env)
    seen_expiries = set()
    while first.poll() is None:
        try:
            seen_expiries.add(json.loads(lease_file.read_text())["expires_at"])
        except (FileNotFoundError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    out1, err1 = first.communicate(timeout=120)
    out2, err2 = second.communicate(timeout=120)
    assert first.returncode == 0, err1[-3000:]
    assert second.returncode == 0, err2[-3000:]
    assert log_lines(log).count("source-4") == 1, log_lines(log)
    assert json.loads(out1.strip().splitlines()[-1])["states"][0] == "Completed"
    assert json.loads(out2.strip().splitlines()[-1])["states"][0] == "Cached"
    assert len(seen_expiries) >= 3, "the lease was renewed during the step"
