"""An experiment whose one step blocks until LMFLOWS_TEST_RELEASE exists (for Ctrl-C)."""

from prefect import flow

from tests.helpers import steps


@flow
def slow():
    return steps.blocker("slow")
