"""needs_param.py under `from __future__ import annotations`: every annotation is a string."""

from __future__ import annotations

from prefect import flow

from tasks.toy import count_words


@flow
def needs_param_postponed(text: str):
    return count_words(text=text)
