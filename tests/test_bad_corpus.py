"""Bad data and tokenizer files get one line naming the file (and line) before any output is
committed: non-UTF-8 bytes, an empty corpus, a tokenizer folder without a tokenizer, a
truncated tokenizer.json."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest

from tests.conftest import REPO

KJV_SHARD = REPO / "data" / "kjv" / "kjv-00.jsonl.gz"


def _shard(folder: Path, lines: list[bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "part-0.jsonl.gz", "wb") as handle:
        handle.writelines(line + b"\n" for line in lines)
    return folder


def test_non_utf8_bytes_name_the_shard_and_line(tmp_path):
    from tasks.data.dedup import dedup
    from tasks.data.shards import CorpusError

    good = json.dumps({"id": "a", "text": "In the beginning"}).encode()
    bad = b'{"id": "b", "text": "caf\xe9 latin-1"}'
    corpus = _shard(tmp_path / "corpus", [good, bad])
    with pytest.raises(CorpusError) as raised:
        dedup.fn.__wrapped__(
            dataset=str(corpus), name="x", processes=1, output_path=str(tmp_path / "out")
        )
    message = str(raised.value)
    assert f"{corpus}/part-0.jsonl.gz:2: not UTF-8 text" in message
    assert "b'\\xe9'" in message and "\n" not in message


def test_a_json_line_that_is_not_an_object_names_its_line(tmp_path):
    from tasks.data.shards import CorpusError, iter_documents

    corpus = _shard(tmp_path / "corpus", [b'{"text": "a"}', b"[1, 2]"])
    with pytest.raises(CorpusError, match=r"part-0.jsonl.gz:2: a JSON list, not an object"):
        list(iter_documents(str(corpus)))


def test_an_empty_corpus_fails_dedup_and_commits_nothing(prefix):
    from tasks.core import flow
    from tasks.data.dedup import dedup

    corpus = _shard(Path(prefix).parent / "empty", [b"", b"  "])

    @flow
    def dedup_empty():
        return dedup(str(corpus), name="empty", processes=1)

    state = dedup_empty(return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="holds no documents"):
        state.result()
    assert not list(Path(prefix).rglob("commit.json"))


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    from tasks.data.train_tokenizer import train_tokenizer

    path = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer.fn.__wrapped__(corpus=str(KJV_SHARD), vocab_size=300, output_path=str(path))
    return path


def test_a_folder_without_a_tokenizer_is_refused_naming_it(tmp_path, tokenizer_dir):
    from tasks.data.tokenize import tokenize
    from tasks.data.tokenizer_files import TokenizerFileError, load_tokenizer

    empty = tmp_path / "no-tokenizer"
    shutil.copytree(tokenizer_dir, empty)
    (empty / "tokenizer.json").unlink()
    with pytest.raises(TokenizerFileError, match=f"tokenizer {empty} has none of tokenizer.json"):
        load_tokenizer(str(empty))
    with pytest.raises(TokenizerFileError, match="not a tokenizer folder"):
        tokenize.fn.__wrapped__(
            dataset=str(KJV_SHARD),
            tokenizer=str(empty),
            name="kjv",
            output_path=str(tmp_path / "out"),
        )
    assert not (tmp_path / "out").exists()
    assert load_tokenizer(f"file://{tokenizer_dir}").vocab_size == 300  # the intact folder


def test_a_truncated_tokenizer_json_is_refused_naming_the_file(tmp_path, tokenizer_dir):
    from tasks.data.tokenizer_files import TokenizerFileError, load_tokenizer

    cut = tmp_path / "cut"
    shutil.copytree(tokenizer_dir, cut)
    text = (cut / "tokenizer.json").read_bytes()
    (cut / "tokenizer.json").write_bytes(text[: len(text) // 2])
    with pytest.raises(TokenizerFileError, match=rf"{cut}/tokenizer.json is not valid JSON"):
        load_tokenizer(str(cut))


def test_a_corpus_too_small_for_a_validation_split_commits_no_tokenized_output(
    tmp_path, tokenizer_dir
):
    """One document: everything goes to one split. The tokenize step refuses instead of
    committing an empty validation split that training would trip on later."""
    from tasks.data.shards import CorpusError
    from tasks.data.tokenize import tokenize

    one = json.dumps({"id": "x", "text": "In the beginning"}).encode()
    corpus = _shard(tmp_path / "one", [one])
    with pytest.raises(CorpusError, match="none of its 1 documents went to the validation split"):
        tokenize.fn.__wrapped__(
            dataset=str(corpus),
            tokenizer=str(tokenizer_dir),
            name="one",
            validation_fraction=0.05,
            output_path=str(tmp_path / "out"),
        )


def test_splits_shorter_than_one_sequence_are_refused_before_training(tmp_path, tokenizer_dir):
    """A real tokenized output of 40 short documents: its splits hold some hundreds of tokens
    (train) and tens (validation); seq_len beyond them is refused in one line naming the
    dataset and split, before levanter starts."""
    from tasks.data.tokenize import tokenize
    from tasks.lm.train import SplitTooShortError, check_split_lengths, split_tokens

    with gzip.open(KJV_SHARD, "rt") as handle:
        docs = [json.loads(line) for _, line in zip(range(40), handle)]
    corpus = _shard(tmp_path / "small", [json.dumps(d).encode() for d in docs])
    out = tmp_path / "tokenized"
    meta = tokenize.fn.__wrapped__(
        dataset=str(corpus),
        tokenizer=str(tokenizer_dir),
        name="small",
        validation_fraction=0.2,
        output_path=str(out),
    )
    train, validation = (split_tokens(str(out), s) for s in ("train", "validation"))
    assert (train, validation) == (
        meta["splits"]["train"]["tokens"],
        meta["splits"]["validation"]["tokens"],
    )
    check_split_lengths({"small": str(out)}, validation)  # exactly one validation sequence
    with pytest.raises(SplitTooShortError) as raised:
        check_split_lengths({"small": str(out)}, validation + 1)
    assert str(raised.value).startswith(
        f"dataset 'small': its validation split has {validation} tokens, fewer than one"
    )
    with pytest.raises(SplitTooShortError, match=f"its train split has {train} tokens"):
        check_split_lengths({"small": str(out)}, train + 1)


HARNESS = REPO / "data" / "harness"


@pytest.mark.parametrize(
    "edit, message",
    [
        ({"output_type": "generate_until"}, "output_type 'generate_until' cannot be scored here"),
        ({"output_type": "loglikelihood_rolling"}, "'loglikelihood_rolling' cannot be scored"),
        ({"test_split": "validation"}, "test_split 'validation' is not a split of its data_files"),
        ("empty", "data file 'kjv_completion.jsonl' (test) has no documents"),
    ],
    ids=["generate_until", "loglikelihood_rolling", "missing-split", "empty-data"],
)
def test_a_local_harness_task_that_cannot_be_scored_is_refused_when_planned(
    tmp_path, edit, message
):
    """What lm-eval found only after the model loaded (UnboundLocalError, KeyError, TypeError,
    a bare NotImplementedError) is one line naming the task file when the flow is planned."""
    import re

    import yaml

    from tasks.core import StepRef, planning
    from tasks.lm.harness import HarnessTaskError, harness_eval, harness_tasks

    folder = tmp_path / "tasks"
    folder.mkdir()
    config = yaml.safe_load((HARNESS / "kjv_completion.yaml").read_text())
    data = (HARNESS / "kjv_completion.jsonl").read_bytes()
    if edit == "empty":
        data = b"\n"
    else:
        config.update(edit)
    (folder / "kjv_completion.yaml").write_text(yaml.safe_dump(config))
    (folder / "kjv_completion.jsonl").write_bytes(data)
    with pytest.raises(HarnessTaskError, match=re.escape(message)) as raised:
        with planning.planning():
            harness_eval(
                StepRef("checkpoints/m", "0123456789"),
                StepRef("tokenizer/t", "0123456789"),
                ["kjv_completion"],
                name="bad",
                task_folder=harness_tasks(str(folder)),
            )
    assert str(raised.value).startswith("harness task kjv_completion.yaml: ")


FULL_DISK_WRITER = """
import errno, resource, signal, sys
from tasks.core import storage
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    storage.write_atomic(sys.argv[1], b"x" * 100_000)
except OSError as exc:
    sys.exit(0 if exc.errno == errno.EFBIG else 3)
sys.exit(4)
"""


def test_a_write_that_runs_out_of_space_leaves_no_temp_file(tmp_path):
    """A real short write (a file size limit stands in for a full disk: the kernel refuses
    the write past it): the old content stays and no `*.tmp-*` file is left."""
    from tests.conftest import run_python

    state = tmp_path / "state"
    state.mkdir()
    (state / "lease.json").write_text("old")
    done = run_python(["-c", FULL_DISK_WRITER, str(state / "lease.json")])
    assert done.returncode == 0, done.stderr[-2000:]
    assert sorted(p.name for p in state.iterdir()) == ["lease.json"]
    assert (state / "lease.json").read_text() == "old"
