"""A flow whose float parameter has an int default: a run coerces it to 2.0, so must plan."""

from prefect import flow

from tasks.toy import make_numbers, scale


@flow
def float_default(factor: float = 2, text: str = "a"):
    numbers = make_numbers(n=3, seed=0)
    return scale(numbers.cd("numbers.json"), factor=factor)
