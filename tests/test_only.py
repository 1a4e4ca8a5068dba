"""`--only GLOB` on `run` and `plan`: the matching steps and the steps they need, nothing
else; a glob that matches nothing is one line and nothing runs. Through the real command line
on the toy experiment (five steps: numbers -> scale -> summary <- words, summary -> scale)."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import run_python
from tests.test_cli import flows_cli_many

NUMBERS = "toy/numbers-a5ab788e68"
SCALED = "toy/scale-503585bc9a"
WORDS = "toy/words-3b1020537d"
SUMMARY = "toy/summary-a450e2fef1"
SHIFTED = "toy/scale-61d5a4912a"


def committed(prefix: Path) -> set[str]:
    return {
        str(p.parent.parent.relative_to(prefix))
        for p in prefix.rglob(".lmflows/commit.json")
        if ".lmflows/staging" not in str(p)
    }


def plan_rows(stdout: str) -> list[str]:
    return [ln.split()[0] for ln in stdout.splitlines()[1:] if ln.startswith("toy/")]


def test_only_runs_the_matching_steps_and_what_they_need(tmp_path):
    prefix = tmp_path / "out"
    args = ["toy", "--prefix", str(prefix)]
    by_name, by_output, several, idle, idle_run = flows_cli_many(
        ["plan", *args, "--only", "toy/summary"],
        ["plan", *args, "--only", "toy/scale-50*"],  # NAME-HASH: the output path under the prefix
        ["plan", *args, "--only", "toy/words", "--only", "toy/numbers"],
        ["plan", *args, "--only", "toy/words", "toy/nothing*"],
        ["run", *args, "--only", "eval/*"],
    )
    assert plan_rows(by_name.stdout) == [NUMBERS, SCALED, WORDS, SUMMARY]
    assert plan_rows(by_output.stdout) == [NUMBERS, SCALED]
    assert plan_rows(several.stdout) == [NUMBERS, WORDS]
    for refused, glob in ((idle, "toy/nothing*"), (idle_run, "eval/*")):
        assert refused.returncode == 2
        assert refused.stderr.strip() == (
            f"lmflows: error: --only {glob} matches no step of the plan; its steps are: "
            "toy/numbers, toy/scale, toy/summary, toy/words"
        )
    assert not prefix.exists(), "nothing ran"

    words = run_python(["-m", "flows", "run", *args, "--only", "toy/words"])
    assert words.returncode == 0, words.stderr[-3000:]
    assert committed(prefix) == {WORDS}
    summary = run_python(["-m", "flows", "run", *args, "--only", "toy/summary"])
    assert summary.returncode == 0, summary.stderr[-3000:]
    assert committed(prefix) == {NUMBERS, SCALED, WORDS, SUMMARY}, "not the last scale"
