"""An experiment given as a file path: two steps from the test helpers."""

from prefect import flow

from tests.helpers import steps


@flow
def file_experiment():
    a = steps.source(6)
    return steps.derive(a, k=7)
