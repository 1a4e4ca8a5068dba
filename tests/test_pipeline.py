"""The reference pipeline on CPU: downloads over a real HTTP server, dedup quality on planted
duplicates, tokenizer, and the whole pipeline end to end (tiny sizes), then all Cached."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import json
import math
import random
import threading
from pathlib import Path

import pytest
from prefect import flow

from tests.conftest import REPO
from tests.helpers.api import final_task_states

KJV = REPO / "data" / "kjv"


@pytest.fixture(scope="module")
def http_base():
    """A real HTTP server on 127.0.0.1 serving data/kjv."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(KJV))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_download_url_over_http_records_sizes_and_checksums(prefix, http_base):
    from tasks.download import download_url

    @flow
    def fetch(urls):
        return download_url(urls, name="kjv-http", return_state=True)

    urls = [f"{http_base}/kjv-01.jsonl.gz", f"{http_base}/kjv-02.jsonl.gz"]
    state = fetch(urls)
    assert state.name == "Completed"
    ref = state.result()
    files = ref.metadata["files"]
    for entry in files:
        local = (KJV / entry["name"]).read_bytes()
        assert entry["bytes"] == len(local)
        assert entry["sha256"] == hashlib.sha256(local).hexdigest()
        assert Path(ref.path, entry["name"]).read_bytes() == local
    assert fetch(urls).name == "Cached"


def test_download_url_failure_commits_nothing(prefix, http_base):
    from tasks.download import download_url

    @flow
    def fetch():
        return download_url([f"{http_base}/missing.jsonl.gz"], name="broken", return_state=True)

    state = fetch(return_state=True)
    assert state.is_failed()
    out = Path(download_url.ref_for([f"{http_base}/missing.jsonl.gz"], name="broken").path)
    assert not (out / ".lmflows/commit.json").exists()


def _kjv_docs(shard: str = "kjv-00.jsonl.gz") -> list[dict]:
    with gzip.open(KJV / shard, "rt") as handle:
        return [json.loads(line) for line in handle]


def _near_copy(text: str, rng: random.Random, rate: float) -> str:
    words = text.split()
    for i in range(len(words)):
        if rng.random() < rate:
            words[i] = rng.choice(["lo", "verily", "thus", "behold", "amen"])
    return " ".join(words)


def test_dedup_finds_planted_exact_and_near_duplicates(tmp_path):
    from tasks.dedup import dedup

    rng = random.Random(7)
    base = [d for d in _kjv_docs() if len(d["text"].split()) > 120][:200]
    corpus = [dict(d) for d in base]
    cluster_of: dict[str, str] = {}  # member id -> id of the base document it copies
    for kind, count in (("exact", 30), ("near", 30)):
        for i, d in enumerate(rng.sample(base, count)):
            text = (
                "  " + d["text"].upper().replace(" ", "\n ")
                if kind == "exact"
                else _near_copy(d["text"], rng, 0.02)
            )
            corpus.append({"id": f"{kind}-{i}", "text": text})
            cluster_of[f"{kind}-{i}"] = cluster_of[d["id"]] = d["id"]
    rng.shuffle(corpus)  # a copy may come before its original: either one may be kept
    src = tmp_path / "src"
    src.mkdir()
    for part in range(2):
        with gzip.open(src / f"part-{part}.jsonl.gz", "wt") as handle:
            for doc in corpus[part::2]:
                handle.write(json.dumps(doc) + "\n")
    out = tmp_path / "out"
    stats = dedup.fn.__wrapped__(
        dataset=str(src), name="planted", processes=2, output_path=str(out)
    )
    kept = set()
    for shard in sorted((out / "data").glob("*.jsonl.gz")):
        with gzip.open(shard, "rt") as handle:
            kept.update(json.loads(line)["id"] for line in handle)
    dropped = {d["id"] for d in corpus} - kept
    clusters = set(cluster_of.values())
    should_drop = len(cluster_of) - len(clusters)  # every member but one per cluster
    true_drops = len(dropped & set(cluster_of))
    recall = true_drops / should_drop
    precision = true_drops / max(1, len(dropped))
    kept_per_cluster = {
        c: sum(1 for m in cluster_of if cluster_of[m] == c and m in kept) for c in clusters
    }
    print(
        f"dedup on planted duplicates: recall {recall:.3f}, precision {precision:.3f}, "
        f"stats {stats}"
    )
    assert recall >= 0.95 and precision >= 0.95
    assert min(kept_per_cluster.values()) == 1, "a cluster must never lose every member"
    assert stats["exact_duplicates"] >= 25
    report = json.loads((out / "stats.json").read_text())
    assert report["documents_in"] == 260 and report["examples"]
    assert {s.name for s in (out / "data").iterdir()} == {"part-0.jsonl.gz", "part-1.jsonl.gz"}


def test_trained_tokenizer_loads_with_autotokenizer(tmp_path):
    from transformers import AutoTokenizer

    from tasks.train_tokenizer import train_tokenizer

    out = tmp_path / "tok"
    meta = train_tokenizer.fn.__wrapped__(
        corpus=str(KJV / "kjv-03.jsonl.gz"), vocab_size=600, output_path=str(out)
    )
    tok = AutoTokenizer.from_pretrained(str(out))
    assert len(tok) == meta["vocab_size"] <= 600
    assert tok.bos_token and tok.eos_token and tok.pad_token
    assert tok.model_input_names == ["input_ids", "attention_mask"]
    assert tok.model_max_length == 4096
    text = "In the beginning God created the heaven and the earth."
    assert tok.decode(tok(text)["input_ids"]) == text


def _independent_loss_and_bpb(refs: dict, seq_len: int) -> tuple[float, float]:
    """Loss and bits per byte of the trained model on the validation split, computed without
    levanter's evaluator: the HF export run by transformers' Flax Llama on the cache's token
    stream cut into seq_len windows, nats summed from per-token log-probabilities, bytes
    counted from the decoded text of the predicted tokens."""
    import jax
    import numpy as np
    from levanter.store.cache import TreeCache
    from transformers import AutoTokenizer, FlaxLlamaForCausalLM

    export = sorted(Path(refs["model"].path, "hf").glob("step-*"))[-1]
    model = FlaxLlamaForCausalLM.from_pretrained(str(export))
    tokenizer = AutoTokenizer.from_pretrained(refs["tokenizer"].path)
    cache = TreeCache.load(
        f"{refs['tokenized'].path}/validation",
        exemplar={"input_ids": np.array([0], dtype=np.int32)},
    )
    docs = cache.get_batch_sync(list(range(len(cache))))
    ids = np.concatenate([np.asarray(doc["input_ids"]) for doc in docs])
    windows = ids[: len(ids) // seq_len * seq_len].reshape(-1, seq_len)
    logp = jax.nn.log_softmax(np.asarray(model(windows).logits, dtype=np.float32), axis=-1)
    targets = windows[:, 1:]
    nats = -np.take_along_axis(np.asarray(logp[:, :-1]), targets[..., None], axis=-1)[..., 0]
    text_bytes = sum(len(tokenizer.decode(row).encode("utf-8")) for row in targets)
    return float(nats.sum()) / targets.size, float(nats.sum()) / text_bytes / math.log(2)


def test_pipeline_end_to_end_then_all_cached(prefix, http_base, monkeypatch):
    from flows.pretrain import pretrain

    # levanter must never start (or join) a Ray of its own (inside a Ray task it would try):
    # the steps' bodies run in worker processes of their own, so a Ray address that answers
    # nothing, inherited by them, makes any ray.init there fail the run.
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")
    params = dict(
        name="kjv-e2e",
        urls=[f"{http_base}/kjv-00.jsonl.gz"],
        vocab_size=512,
        hidden_dim=32,
        num_layers=1,
        num_heads=2,
        intermediate_dim=64,
        seq_len=32,
        batch_size=8,
        num_train_steps=12,
        learning_rate=1e-2,
    )
    state = pretrain(**params, return_state=True)
    assert state.is_completed(), state.message
    refs = state.result()
    assert final_task_states(state.state_details.flow_run_id, 6) == ["Completed"] * 6

    model = Path(refs["model"].path)
    rows = [json.loads(line) for line in (model / "metrics.jsonl").read_text().splitlines()]
    first_eval = next(r["eval/loss"] for r in rows if r.get("eval/loss") is not None)
    results = refs["eval"].metadata["kjv-e2e"]
    vocab = refs["tokenizer"].metadata["vocab_size"]
    print(
        f"validation loss: untrained (step 0) {first_eval:.3f}, uniform {math.log(vocab):.3f},"
        f" trained {results['loss']:.3f}; bits/byte {results['bits_per_byte']:.3f}"
    )
    assert results["loss"] < first_eval and results["loss"] < math.log(vocab)
    assert results["perplexity"] == pytest.approx(math.exp(results["loss"]))
    loss, bits_per_byte = _independent_loss_and_bpb(refs, seq_len=params["seq_len"])
    print(f"independent: loss {loss:.4f}, bits/byte {bits_per_byte:.4f}")
    assert results["loss"] == pytest.approx(loss, rel=0.005)
    assert results["bits_per_byte"] == pytest.approx(bits_per_byte, rel=0.02)
    assert (model / "loss.png").stat().st_size > 1000
    assert list((model / "checkpoints").glob("step-*"))
    assert list((model / "hf").glob("step-*/config.json"))
    tokenized = refs["tokenized"].metadata["splits"]
    assert tokenized["train"]["tokens"] > 0 and tokenized["validation"]["documents"] > 0
    assert json.loads(Path(refs["eval"].path, "results.json").read_text())["kjv-e2e"]

    # The in-training validation loss scores the whole split by default: the last one is
    # evaluate's figure for the same model (it was a 256-sequence subset before).
    last_eval = [r["eval/loss"] for r in rows if r.get("eval/loss") is not None][-1]
    assert last_eval == pytest.approx(results["loss"], rel=1e-3)

    keys = {"loss-curve-kjv-e2e", "metrics-kjv-e2e", "eval-kjv-e2e", "progress-kjv-e2e"}
    watched = _watched(state.state_details.flow_run_id, keys | {"steps-pretrain"})
    assert keys <= set(watched["artifacts"]), sorted(watched["artifacts"])
    curve = watched["artifacts"]["loss-curve-kjv-e2e"]
    assert f"file://{model}/loss.png" in curve.data  # the committed place, not the staging one
    steps = json.loads(watched["artifacts"]["steps-pretrain"].data)
    assert [row["state"] for row in steps] == ["Completed"] * 6
    assert all(row["output"].startswith("file://") and row["bytes"] > 0 for row in steps)

    again = pretrain(**params, return_state=True)
    assert final_task_states(again.state_details.flow_run_id, 6) == ["Cached"] * 6
    assert again.result()["model"] == refs["model"]
    steps = json.loads(
        _watched(again.state_details.flow_run_id, {"steps-pretrain"})["artifacts"][
            "steps-pretrain"
        ].data
    )
    assert [row["state"] for row in steps] == ["Cached"] * 6


def _watched(flow_run_id, keys: set[str]) -> dict:
    """What a user sees of a flow run through the API: its keyed artifacts, once `keys` are
    among them. (The test process sends no logs to the API: PREFECT_LOGGING_TO_API_ENABLED
    is false in tests/conftest.py, so waiting for a log line only ever ran out the clock.)"""
    import time

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while True:
            artifacts = client.read_artifacts(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            found = {a.key: a for a in artifacts if a.key}
            if keys <= set(found) or time.monotonic() > deadline:
                return {"artifacts": found}
            time.sleep(0.5)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"num_heads": 3}, "hidden_dim=32 must be a multiple of num_heads=3"),
        ({"num_train_steps": 0}, "num_train_steps=0 must be a positive integer"),
        ({"num_train_steps": 1}, "levanter saves no checkpoint at step 0"),
        ({"vocab_size": 100}, "vocab_size=100"),
    ],
)
def test_bad_pipeline_arguments_are_caught_by_planning(change, message):
    from flows.pretrain import pretrain
    from tasks.core import planning

    params = dict(
        name="bad",
        urls=["data/kjv/kjv-00.jsonl.gz"],
        vocab_size=512,
        hidden_dim=32,
        num_heads=2,
        num_train_steps=5,
    )
    params.update(change)
    with pytest.raises(ValueError, match=message), planning.planning():
        pretrain.fn(**params)


def test_run_checks_every_step_before_running_any(tmp_path):
    from tests.conftest import run_python

    prefix = tmp_path / "out"
    result = run_python(
        ["-m", "flows", "run", "tests/data/bad_experiment.py", "--prefix", str(prefix)]
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "lmflows: error: hidden_dim=32 must be a multiple of num_heads=3"
    ]
    assert not list(prefix.rglob("*")), "nothing may run or be written"
