"""file_experiment with derive's k changed from 7 to 8 (for `explain`)."""

from prefect import flow

from tests.helpers import steps


@flow
def file_experiment_k8():
    a = steps.source(6)
    return steps.derive(a, k=8)
