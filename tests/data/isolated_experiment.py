"""An experiment whose one step runs isolated; `n` picks how it ends (tests/test_isolation.py):
n > 0 commits, n < 0 is a known refusal (LinkedPathError), n == 0 a genuine bug."""

from tasks.core import flow
from tests.helpers.steps import isolated


@flow
def isolated_experiment(n: int = 3, sleep: float = 0.0):
    print(f"flow body says n={n}")  # once per run, not again while planning
    return isolated(n=n, sleep=sleep)
