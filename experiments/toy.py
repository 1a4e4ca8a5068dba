"""A five-step toy experiment: fast, CPU-only, exercises dependencies and `.cd()`.

Run it with `python -m flows run toy`; the demo pipeline lives in `experiments/demo.py`.
"""

from __future__ import annotations

from tasks.core import flow
from tasks.toy import count_words, make_numbers, scale, summarize


@flow(name="toy")
def toy_experiment(n: int = 1000, factor: float = 2.0) -> dict:
    numbers = make_numbers(n=n, seed=0)
    scaled = scale(numbers.cd("numbers.json"), factor=factor)
    words = count_words(text="the quick brown fox jumps over the lazy dog the end")
    both = summarize(inputs=[scaled, words])
    shifted = scale(both.cd("summary.json"), factor=-1.0)
    return {"summary": shifted.path, "metadata": both.metadata}
