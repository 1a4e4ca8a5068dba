"""Bugs a one-bug-at-a-time audit planted that the suite did not catch: one test each (the
mutants are in scripts/mutants.py, so `make mutants` keeps checking that these fail)."""

from __future__ import annotations

import gzip
import http.server
import json
import os
import socket
import threading
import time
from pathlib import Path

from prefect import flow

from tasks.core import lease, storage
from tests.conftest import REPO, calls
from tests.helpers import steps
from tests.test_cli import flows_cli_many

# --- leases: a reused pid is not the holder -----


def test_a_lease_naming_this_pid_with_another_start_time_is_dead_and_its_step_runs_at_once(
    prefix, call_log
):
    """The holder's pid lives, but it started at another time: the pid was reused by a
    process that holds nothing, so the lease binds nobody (a lease of 10 minutes)."""
    ref = steps.source.ref_for(3)
    path = Path(storage.lease_path(ref.name_with_hash))
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    planted = {
        "holder": "a-process-that-died",
        "token": "t0",
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_started": 12345.0,  # not this process's start time
        "acquired_at": now,
        "expires_at": now + 600,
    }
    path.write_text(json.dumps(planted))
    assert not lease.is_live(lease.read(str(path)))
    path.write_text(json.dumps({**planted, "pid_started": lease._process_started(os.getpid())}))
    assert lease.is_live(lease.read(str(path))), "the same lease with the right start time binds"
    path.write_text(json.dumps(planted))

    @flow
    def one():
        return steps.source(3)

    started = time.monotonic()
    assert one().name_with_hash == ref.name_with_hash
    assert time.monotonic() - started < 60, "the step waited for a dead holder's lease"
    assert calls(call_log) == ["source-3"]


# --- verify names damage that the quick check also sees -----


@flow
def _pair() -> list:
    return [steps.source(3), steps.source(4)]


def test_verify_names_a_truncated_and_a_deleted_file(prefix, call_log):
    """Damage that changes a file's size (the quick check sees it too) is still reported by
    `verify`, which reads every commit record, damaged or not."""
    a, b = _pair()
    Path(a.path, "data.json").write_text("[]")
    Path(b.path, "data.json").unlink()
    [bad] = flows_cli_many(["verify", "--prefix", prefix])
    assert bad.returncode == 1, bad.stdout + bad.stderr
    damaged = [line for line in bad.stdout.splitlines() if line.startswith("DAMAGED")]
    assert len(damaged) == 2, bad.stdout
    assert any(a.name_with_hash in line and "file data.json changed" in line for line in damaged)
    assert any(b.name_with_hash in line and "file data.json is missing" in line for line in damaged)
    assert "2 damaged" in bad.stdout


# --- --param with postponed annotations -----


def test_a_str_parameter_under_postponed_annotations_keeps_its_text(tmp_path):
    """`from __future__ import annotations` makes every annotation a string: `text: str` is
    then "str", and `--param text=123` must still be the text "123", as without it."""
    from flows.loader import load_flow
    from flows.params import bind

    postponed = load_flow("tests/data/needs_param_postponed.py")
    assert bind(postponed, {"text": "123"}) == {"text": "123"}
    prefix = str(tmp_path / "out")
    postponed_plan, plain_plan = flows_cli_many(
        ["plan", "tests/data/needs_param_postponed.py", "--param", "text=123", "--prefix", prefix],
        ["plan", "tests/data/needs_param.py", "--param", "text=123", "--prefix", prefix],
    )
    assert postponed_plan.returncode == 0, postponed_plan.stderr
    assert postponed_plan.stdout.splitlines()[1] == plain_plan.stdout.splitlines()[1]


# --- the server watch forgives a miss that is followed by an answer -----


class _Flapping(http.server.BaseHTTPRequestHandler):
    """/health fails every other time."""

    asked = 0

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        type(self).asked += 1
        self.send_response(200 if type(self).asked % 2 == 0 else 503)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def test_a_server_that_fails_every_other_health_check_is_never_lost():
    from flows.watch import ServerWatch

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Flapping)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/api"
        with ServerWatch(url, interval=0.02, misses=2) as watch:
            deadline = time.monotonic() + 30
            while _Flapping.asked < 30 and time.monotonic() < deadline:
                time.sleep(0.02)
        assert _Flapping.asked >= 30
        assert not watch.lost, "two misses in all, never two in a row: the server is there"
    finally:
        server.shutdown()
        server.server_close()


# --- near-duplicates at threshold 1.0 -----


def test_threshold_one_drops_a_document_with_the_same_words(tmp_path):
    """Two documents with the same words and other punctuation are not exact duplicates
    (their normalised texts differ) but their similarity is exactly 1.0: at threshold 1.0
    ("at or above") the second goes."""
    from tasks.data.dedup import dedup

    words = " ".join(f"word{i}" for i in range(40))
    docs = [
        {"id": "a", "text": words},
        {"id": "b", "text": words.replace(" ", ", ")},
        {"id": "c", "text": " ".join(f"other{i}" for i in range(40))},
    ]
    src = tmp_path / "src"
    src.mkdir()
    with gzip.open(src / "part-0.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(doc) + "\n" for doc in docs)
    out = tmp_path / "out"
    stats = dedup.fn.__wrapped__(
        dataset=str(src), name="one", threshold=1.0, processes=1, output_path=str(out)
    )
    with gzip.open(out / "data" / "part-0.jsonl.gz", "rt") as handle:
        kept = [json.loads(line)["id"] for line in handle]
    assert kept == ["a", "c"]
    assert stats["exact_duplicates"] == 0 and stats["fuzzy_duplicates"] == 1


# --- the quick check of a cached output looks at every file -----


def test_a_truncated_second_file_makes_the_next_run_recompute_naming_it(prefix, call_log, caplog):
    @flow
    def two_files():
        return steps.two_files("x")

    first = two_files()
    files = sorted(p.name for p in Path(first.path).iterdir() if p.is_file())
    assert files == ["a.txt", "z.txt"]
    Path(first.path, "z.txt").write_text("short")
    caplog.set_level("WARNING")
    assert two_files() == first
    assert calls(call_log) == ["two-files-x", "two-files-x"], "the damaged output is recomputed"
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("is damaged: file z.txt has 5 bytes" in w for w in warnings), warnings
    assert Path(first.path, "z.txt").read_text() == "z" * 100


# --- tokenize: the validation split holds about validation_fraction of the documents -----

KJV_SHARD = str(REPO / "data" / "kjv" / "kjv-00.jsonl.gz")


def _documents_in_cache(split_dir: Path) -> int:
    """Rows of a levanter cache, from its ledger (not from the step's own counts)."""
    return json.loads((split_dir / "shard_ledger.json").read_text())["total_num_rows"]


def test_the_validation_split_holds_about_validation_fraction_of_the_documents(tmp_path):
    from tasks.data.tokenize import tokenize
    from tasks.data.train_tokenizer import train_tokenizer

    tokenizer = str(tmp_path / "tokenizer")
    train_tokenizer.fn.__wrapped__(corpus=KJV_SHARD, vocab_size=512, output_path=tokenizer)
    with gzip.open(KJV_SHARD, "rt") as handle:
        documents = sum(1 for line in handle if line.strip())
    out = tmp_path / "tokenized"
    tokenize.fn.__wrapped__(
        dataset=KJV_SHARD,
        tokenizer=tokenizer,
        name="kjv",
        validation_fraction=0.2,
        output_path=str(out),
    )
    validation = _documents_in_cache(out / "validation")
    train = _documents_in_cache(out / "train")
    assert train + validation == documents
    assert 0.15 <= validation / documents <= 0.25, (validation, documents)


# --- sft: the user's turns are not trained on -----


def test_a_built_chat_example_trains_on_the_assistant_turn_only(tmp_path):
    """The example levanter builds from sft's data config (its cache, its format): the loss
    mask leaves out every user token and keeps the assistant's answer."""
    import haliax as hax
    import jax
    import numpy as np

    from tasks.data.train_tokenizer import train_tokenizer
    from tasks.lm.sft import (
        DEFAULT_CHAT_TEMPLATE,
        build_chat_cache,
        chat_data_config,
        templated_tokenizer,
    )

    tokenizer = str(tmp_path / "tokenizer")
    train_tokenizer.fn.__wrapped__(corpus=KJV_SHARD, vocab_size=512, output_path=tokenizer)
    local = str(tmp_path / "templated")
    hf = templated_tokenizer(tokenizer, DEFAULT_CHAT_TEMPLATE, local)
    hf = type(hf).from_pretrained(local)
    question = "Which book of the Bible is this verse from? In the beginning God created"
    conversation = {
        "messages": [
            {"role": "user", "content": question},
            {"role": "assistant", "content": "Genesis"},
        ]
    }
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps(conversation) + "\n")
    cache_root = tmp_path / "cache"
    for split in ("train", "validation"):
        build_chat_cache([str(chat)], hf, DEFAULT_CHAT_TEMPLATE, str(cache_root / split), 64)
    config = chat_data_config(local, str(cache_root), DEFAULT_CHAT_TEMPLATE)
    datasets = config.train_sets(hax.Axis("position", 64), False, key=jax.random.PRNGKey(0))
    example = datasets["chat"].as_sync_dataset()[0]
    tokens = np.asarray(example.tokens.array)
    trained = np.asarray(example.loss_mask.array)[:-1] > 0  # position i predicts token i + 1
    targets = tokens[1:]
    assert "Genesis" in hf.decode(targets[trained])
    assert "Which book" not in hf.decode(targets[trained])
    assert "Which book" in hf.decode(targets[~trained])


# --- train_lm: every optimizer argument reaches levanter -----


def test_the_weight_decay_asked_for_reaches_levanters_optimizer(on_shared, tiny_lm):
    """The shared tiny model asks for weight_decay=0.05 (the default is 0.1); the training
    records levanter's own optimizer config next to the model."""
    from tests.helpers.tiny import TINY

    config = json.loads(Path(tiny_lm["model"].path, "train_config.json").read_text())
    assert TINY["weight_decay"] == 0.05
    assert config["optimizer"]["weight_decay"] == 0.05
    assert config["optimizer"]["learning_rate"] == TINY["learning_rate"]


# --- abandoned attempt folders are reported and removed (issue #20) -------------------------


def test_status_and_gc_report_abandoned_attempt_folders_and_delete_only_dead_ones(prefix):
    """What a killed resumable step leaves under .lmflows/staging (its checkpoints) is listed
    by `status` and `gc`; `gc --delete` removes it when no run holds the step's lease, and
    keeps the folder of a step whose lease is live."""
    dead, live = steps.count_up.ref_for(5), steps.count_up.ref_for(6)
    for ref in (dead, live):
        checkpoint = Path(storage.staging_root(ref.name_with_hash, prefix), "resume", "ckpt-000")
        checkpoint.mkdir(parents=True)
        (checkpoint / "weights.bin").write_bytes(b"w" * 50_000)
    lease_file = Path(storage.lease_path(live.name_with_hash, prefix))
    lease_file.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    lease_file.write_text(
        json.dumps(
            {
                "holder": "a-live-run",
                "token": "t",
                "host": socket.gethostname(),
                "pid": os.getpid(),  # this test process: alive
                "pid_started": lease._process_started(os.getpid()),
                "acquired_at": now,
                "expires_at": now + 600,
            }
        )
    )
    status, listed, deleted, after = flows_cli_many(
        ["status", "--prefix", prefix],
        ["gc", "--prefix", prefix],
        ["gc", "--delete", "--prefix", prefix],
        ["status", "--prefix", prefix],
    )
    for result in (status, listed, deleted, after):
        assert result.returncode == 0, result.stderr
    rows = {
        line.split()[0]: line.split()[-1]
        for line in status.stdout.splitlines()
        if line.startswith("t/count-")
    }
    assert rows == {dead.name_with_hash: "abandoned", live.name_with_hash: "running"}, status
    assert "1 abandoned attempt folders" in status.stdout
    assert dead.name_with_hash in listed.stdout and "run again with --delete" in listed.stdout
    assert f"deleted the abandoned attempt folder of {dead.name_with_hash}" in deleted.stdout
    assert f"folder of {live.name_with_hash}" not in deleted.stdout  # running: not offered
    assert not Path(storage.staging_root(dead.name_with_hash, prefix)).exists()
    assert Path(storage.staging_root(live.name_with_hash, prefix), "resume").is_dir()
    assert dead.name_with_hash not in after.stdout and "running" in after.stdout
    from flows.gc import delete_staging

    assert not delete_staging(live.name_with_hash, prefix), "a live lease keeps its folder"
    assert Path(storage.staging_root(live.name_with_hash, prefix), "resume").is_dir()
