# The two commands the README promises: `make demo` (the main job) and `make test`.
# Both create .venv and install the pinned dependencies on first use.
export PREFECT_SERVER_ANALYTICS_ENABLED ?= false
export RAY_AUTH_MODE ?= disabled
export WANDB_MODE ?= disabled

.PHONY: demo test test-fast lint bench setup mutants

setup:
	@bash scripts/bootstrap.sh

demo: setup
	.venv/bin/python -m flows run demo

# Two worker processes, one per core (pytest-xdist); a module's tests stay in one worker, so a
# module fixture (a Ray cluster, a deployment) is built once. One worker: drop `-n 2`.
test: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -n 2 --dist loadfile

# The core contract in under 3 minutes: what to run while working (the slow tier needs trainings).
test-fast: setup
	.venv/bin/ruff check .
	.venv/bin/python -m pytest -q -n 2 --dist loadfile -m "not slow"

lint: setup
	.venv/bin/ruff check .

bench: setup
	.venv/bin/python -m benches.run_all

# One planted bug at a time in a temporary copy; the guarding tests must fail (not in CI).
mutants: setup
	.venv/bin/python scripts/mutants.py
