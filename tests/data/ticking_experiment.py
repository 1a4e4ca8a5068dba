"""One long step, isolated or in the task's thread (tests/test_isolation.py, lease loss)."""

from tasks.core import flow
from tests.helpers.steps import isolated, ticking


@flow
def ticking_experiment(n: int = 5, sleep: float = 0.0, isolate: bool = True):
    return (isolated if isolate else ticking)(n=n, sleep=sleep)
