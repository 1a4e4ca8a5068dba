"""An experiment whose step name is too long for a path segment."""

from prefect import flow

from tasks.toy import count_words
from tests.helpers import steps


@flow
def long_name():
    count_words(text="fine")
    return steps.flaky("x" * 300)
