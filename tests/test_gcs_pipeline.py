"""gs:// end to end against fake-gcs-server: the demo experiment through the command line from
a working directory that is not the repository (every output in the bucket, the same identities
and evaluation loss as on local disk, a second run all Cached, no local `gs:` folder), the toy
experiment likewise, and the credentials check that fails in seconds instead of hanging."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tasks.core.gcs_auth import GcsAccessError, ensure_gcs_access
from tests.conftest import REPO
from tests.test_gcs import BUCKET, emulator, gcs  # noqa: F401 - emulator is a fixture

STATE = re.compile(r"Task run '([^']+)' - Finished in state (\w+)\(")


def flows_cli(*args: str, cwd: Path, env: dict, timeout: float = 900):
    """`python -m flows ARGS` from `cwd` (not the repository), with the repository on
    PYTHONPATH; Prefect logs at INFO, so every task run's final state is printed."""
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "flows", *args],
        cwd=cwd,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "PREFECT_LOGGING_LEVEL": "INFO",
            "LMFLOWS_PREFIX": "",  # --prefix decides
            **env,
        },
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def step_states(result) -> dict[str, str]:
    """NAME-HASH -> final state name, as the run printed them."""
    return dict(STATE.findall(result.stdout + result.stderr))


def gs_folders(*roots: Path) -> list[str]:
    """Anything named like `gs:` under the roots (what writing gs:// with os/open leaves)."""
    return [str(p) for root in roots for p in root.rglob("gs:*")] + [
        str(p) for root in roots for p in root.glob("gs:*")
    ]


def _env(emulator_url: str) -> dict:
    # Only the emulator: tensorstore is pointed at it by lmflows itself (gcs_auth).
    return {"STORAGE_EMULATOR_HOST": emulator_url}


@pytest.fixture
def on_emulator(emulator, monkeypatch):  # noqa: F811
    """The emulator's URL, and this process's gcsfs pointed at it (to look in the bucket)."""
    import gcsfs

    monkeypatch.setenv("STORAGE_EMULATOR_HOST", emulator)
    gcsfs.GCSFileSystem.clear_instance_cache()
    yield emulator
    gcsfs.GCSFileSystem.clear_instance_cache()


# --- the credentials check --------------------------------------------------------------------


@pytest.fixture
def no_emulator(monkeypatch, tmp_path):
    for name in (
        "STORAGE_EMULATOR_HOST",
        "TENSORSTORE_GCS_HTTP_URL",
        "GOOGLE_AUTH_TOKEN_FOR_TESTING",
        "GOOGLE_APPLICATION_CREDENTIALS",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))  # no gcloud login here


@pytest.mark.parametrize("credentials", ["missing", "garbage", "none"])
def test_without_usable_credentials_gs_fails_in_seconds_with_one_line(
    credentials, no_emulator, monkeypatch, tmp_path
):
    if credentials == "missing":
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "nope.json"))
    elif credentials == "garbage":
        garbage = tmp_path / "key.json"
        garbage.write_text("not a key {")
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(garbage))
    started = time.monotonic()
    with pytest.raises(GcsAccessError) as raised:
        ensure_gcs_access("gs://some-bucket/x")
    elapsed = time.monotonic() - started
    message = str(raised.value)
    print(f"{credentials}: {elapsed:.1f} s: {message}")
    assert elapsed < 10
    assert "\n" not in message
    assert message.startswith("gs://some-bucket: no Google Cloud credentials")
    assert "gcloud auth application-default login" in message
    assert "GOOGLE_APPLICATION_CREDENTIALS" in message
    assert "TENSORSTORE_GCS_HTTP_URL" not in os.environ


def test_other_prefixes_need_no_check(no_emulator, tmp_path):
    ensure_gcs_access(str(tmp_path))
    ensure_gcs_access("memory://x")
    assert "TENSORSTORE_GCS_HTTP_URL" not in os.environ


def test_on_the_emulator_the_check_passes_and_points_tensorstore_at_it(no_emulator, on_emulator):
    url = on_emulator
    ensure_gcs_access(f"gs://{BUCKET}/access-check")
    assert os.environ["TENSORSTORE_GCS_HTTP_URL"] == url
    assert os.environ["GOOGLE_AUTH_TOKEN_FOR_TESTING"] == "anon"
    assert not gcs().find(f"{BUCKET}/access-check"), "the probe object is deleted"
    with pytest.raises(GcsAccessError, match=r"^gs://no-such-bucket: the bucket does not exist"):
        ensure_gcs_access("gs://no-such-bucket/x")


def test_read_only_commands_write_nothing_to_the_bucket(on_emulator, tmp_path):
    """`plan` and `status` promise to write nothing: their access check only lists."""
    prefix = f"gs://{BUCKET}/read-only"
    for command in (["plan", "toy"], ["status"]):
        result = flows_cli(*command, "--prefix", prefix, cwd=tmp_path, env=_env(on_emulator))
        assert result.returncode == 0, result.stderr[-3000:]
    assert not gcs().find(f"{BUCKET}/read-only")
    seen = []

    def watch(method: str):
        import requests

        original = getattr(requests.Session, method)

        def recorded(self, url, *args, **kwargs):
            seen.append(method)
            return original(self, url, *args, **kwargs)

        return recorded

    import requests

    with pytest.MonkeyPatch.context() as patch:
        for method in ("post", "delete"):
            patch.setattr(requests.Session, method, watch(method))
        ensure_gcs_access(prefix, write=False)
        assert seen == []
        ensure_gcs_access(prefix)
        assert seen == ["post", "delete"]


# --- train_lm's pieces: checkpoint intervals, metrics on gs:// ----------------------------------


@pytest.mark.parametrize("every, steps", [(None, 50), (10, 50), (5, 20), (1, 2), (3, 1)])
def test_checkpoint_intervals_are_accepted_by_levanter(every, steps):
    from levanter.checkpoint import CheckpointerConfig

    from tasks.train import checkpoint_keep

    keep = checkpoint_keep(every, steps)
    CheckpointerConfig(base_path="/nowhere", keep=keep).create("run")  # KeyError('until') before
    assert keep[-1] == {"every": max(1, steps - 1), "until": None}


def test_metrics_on_gs_are_uploaded_and_appended_across_attempts(on_emulator, monkeypatch):
    from tasks.lm import tracker

    url = f"gs://{BUCKET}/metrics-test/metrics.jsonl"
    monkeypatch.setattr(tracker, "UPLOAD_SECONDS", 0.0)  # upload at every row
    first = tracker.JsonlTrackerConfig(path=url, attempt="aaaa").init(None)
    first.log({"train/loss": 2.0}, step=0)

    def rows() -> list[dict]:
        return [json.loads(line) for line in gcs().cat_file(url[5:]).splitlines()]

    assert rows() == [{"step": 0, "train/loss": 2.0, "attempt": "aaaa"}]  # before finish
    first.log({"train/loss": 1.5}, step=1)
    # a killed attempt: never finished; the next one appends after what was uploaded
    monkeypatch.setattr(tracker, "UPLOAD_SECONDS", 3600.0)
    second = tracker.JsonlTrackerConfig(path=url, attempt="bbbb").init(None)
    second.log({"train/loss": 1.4}, step=1)
    second.finish()
    assert [(r["step"], r["attempt"]) for r in rows()] == [(0, "aaaa"), (1, "aaaa"), (1, "bbbb")]


# --- toy and demo through the command line ------------------------------------------------------


def test_toy_on_gs_from_another_directory_leaves_no_local_gs_folder(on_emulator, tmp_path):
    url = on_emulator
    prefix = f"gs://{BUCKET}/toy-cli"
    cwd = tmp_path / "elsewhere"
    result = flows_cli("run", "toy", "--prefix", prefix, cwd=cwd, env=_env(url))
    assert result.returncode == 0, result.stderr[-4000:]
    assert not gs_folders(cwd, REPO), gs_folders(cwd, REPO)
    fs = gcs()
    records = fs.glob(f"{BUCKET}/toy-cli/toy/*/.lmflows/commit.json")
    assert len(records) == 5
    summary = fs.glob(f"{BUCKET}/toy-cli/toy/summary-*/summary.json")
    # as on local disk: both inputs are under toy/, so the one entry counts the last one's
    # folder (counts.json and .lmflows)
    assert json.loads(fs.cat_file(summary[0])) == {"inputs": 2, "files": 2}


def test_the_pipeline_on_gs_matches_local_disk_and_is_cached_the_second_time(
    on_emulator, tmp_path, shared_prefix, tiny_lm
):
    """The demo's seven steps at test size (tests/data/tiny_experiment.py): on local disk
    (the session's shared prefix, where the tiny model is already trained), then on gs://
    from nothing, then again (all Cached)."""
    url = on_emulator
    cwd = tmp_path / "elsewhere"
    local_prefix = Path(shared_prefix)
    experiment = str(REPO / "tests/data/tiny_experiment.py")
    local = flows_cli("run", experiment, "--prefix", shared_prefix, cwd=cwd, env={})
    assert local.returncode == 0, local.stderr[-4000:]

    prefix = f"gs://{BUCKET}/demo"
    started = time.monotonic()
    first = flows_cli("run", experiment, "--prefix", prefix, cwd=cwd, env=_env(url))
    gs_s = time.monotonic() - started
    assert first.returncode == 0, (first.stdout + first.stderr)[-6000:]
    started = time.monotonic()
    again = flows_cli("run", experiment, "--prefix", prefix, cwd=cwd, env=_env(url))
    again_s = time.monotonic() - started
    assert again.returncode == 0, (again.stdout + again.stderr)[-6000:]
    print(f"tiny pipeline: gs:// {gs_s:.1f} s, gs:// again {again_s:.1f} s")

    # the same seven identities, run on local disk and on gs://, then all Cached
    local_states, first_states, again_states = map(step_states, (local, first, again))
    assert len(local_states) == 7, local_states
    assert set(first_states.values()) == {"Completed"}, first_states
    assert set(first_states) == set(local_states)
    assert again_states == dict.fromkeys(local_states, "Cached")
    assert not gs_folders(cwd, REPO, local_prefix), gs_folders(cwd, REPO, local_prefix)

    # every output is in the bucket, committed
    fs = gcs()
    root = f"{BUCKET}/demo"
    out = {key.split("/", 1)[0]: f"{root}/{key}" for key in local_states}
    assert set(out) == {"raw", "dedup", "tokenizer", "tokenized", "checkpoints", "eval", "harness"}
    for key in local_states:
        assert fs.exists(f"{root}/{key}/.lmflows/commit.json"), key
    assert len(fs.glob(f"{out['raw']}/kjv-*.jsonl.gz")) == 1
    assert fs.glob(f"{out['dedup']}/data/*.jsonl.gz") and fs.exists(f"{out['dedup']}/stats.json")
    assert fs.exists(f"{out['tokenizer']}/tokenizer.json")
    for split in ("train", "validation"):
        assert fs.find(f"{out['tokenized']}/{split}"), split
    model = out["checkpoints"]
    assert fs.glob(f"{model}/checkpoints/step-*/metadata.json")
    assert fs.glob(f"{model}/hf/step-*/config.json")
    assert fs.glob(f"{model}/hf/step-*/*.safetensors")
    assert fs.exists(f"{model}/hf_reference/config.json")
    assert fs.info(f"{model}/loss.png")["size"] > 1000
    assert fs.exists(f"{model}/train_config.json")
    rows = [json.loads(line) for line in fs.cat_file(f"{model}/metrics.jsonl").splitlines()]
    assert max(r["step"] for r in rows if r.get("train/loss") is not None) == 5
    assert len({r["attempt"] for r in rows}) == 1
    assert not fs.exists(f"{model}/logs"), "levanter's logs are local, not part of the output"
    provenance = json.loads(fs.cat_file(f"{model}/.lmflows/provenance.json"))
    assert provenance["notes"]["resumed_from_step"] is None

    # the same evaluation as on local disk
    gs_results = json.loads(fs.cat_file(f"{out['eval']}/results.json"))
    eval_key = next(k for k in local_states if k.startswith("eval/"))
    local_results = json.loads((local_prefix / eval_key / "results.json").read_text())
    print(f"eval loss: local {local_results['all']['loss']}, gs:// {gs_results['all']['loss']}")
    assert gs_results["all"]["loss"] == pytest.approx(local_results["all"]["loss"], rel=1e-4)
    assert gs_results["kjv"]["bits_per_byte"] == pytest.approx(
        local_results["kjv"]["bits_per_byte"], rel=1e-4
    )
    # and the same harness scores (the checkpoint read back from gs:// by tensorstore)
    gs_harness = json.loads(fs.cat_file(f"{out['harness']}/results.json"))
    harness_key = next(k for k in local_states if k.startswith("harness/"))
    local_harness = json.loads((local_prefix / harness_key / "results.json").read_text())
    for task, entry in local_harness["tasks"].items():
        assert gs_harness["tasks"][task]["n"] == entry["n"]
        for metric, value in entry["metrics"].items():  # two trainings: a near tie may flip
            assert gs_harness["tasks"][task]["metrics"][metric]["value"] == pytest.approx(
                value["value"],
                abs=0.13,  # one of 8 instances
            )
