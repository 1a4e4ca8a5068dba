"""The tokenize step's fast path (direct `encode_batch`, one batch stream for both splits,
cache writes overlapping tokenization) writes the very cache levanter's own `BatchTokenizer`
writes split by split: the same files, byte for byte."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARD = str(REPO / "data" / "kjv" / "kjv-00.jsonl.gz")


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> str:
    from tasks.data.train_tokenizer import train_tokenizer

    path = str(tmp_path_factory.mktemp("tokenizer"))
    train_tokenizer.fn.__wrapped__(corpus=SHARD, vocab_size=512, output_path=path)
    return path


def _levanter_reference(dataset: str, tokenizer: str, output: str, batch_size: int) -> None:
    """The cache as levanter's BatchTokenizer writes it, one split at a time (the step's
    earlier implementation)."""
    from levanter.data.text import BatchTokenizer
    from levanter.store.cache import CacheMetadata, SerialCacheWriter

    from tasks.data.shards import iter_documents
    from tasks.data.tokenize import SPLITS, _split_of
    from tasks.data.tokenizer_files import load_tokenizer

    processor = BatchTokenizer(load_tokenizer(tokenizer), enforce_bos=True, enforce_eos=True)
    metadata = CacheMetadata(preprocessor_metadata=processor.metadata)
    docs = {split: [] for split in SPLITS}
    for doc in iter_documents(dataset):
        docs[_split_of(str(doc.get("id") or doc["text"]), 0.05, 0)].append({"text": doc["text"]})
    for split in SPLITS:
        writer = SerialCacheWriter(
            os.path.join(output, split), processor.output_exemplar, metadata=metadata
        )
        for start in range(0, len(docs[split]), batch_size):
            writer.write_batch(processor(docs[split][start : start + batch_size]))
        writer.__exit__(None, None, None)


def _files(root: str) -> dict[str, bytes]:
    out = {}
    for folder, _, names in os.walk(root):
        for name in names:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = Path(path).read_bytes()
    return out


@pytest.mark.parametrize("batch_size", [1024, 7])
def test_the_step_writes_levanters_cache_byte_for_byte(tokenizer_dir, tmp_path, batch_size):
    from tasks.data.tokenize import tokenize

    step_out, reference_out = str(tmp_path / "step"), str(tmp_path / "reference")
    meta = tokenize.fn.__wrapped__(
        dataset=SHARD,
        tokenizer=tokenizer_dir,
        name="kjv",
        batch_size=batch_size,
        output_path=step_out,
    )
    _levanter_reference(SHARD, tokenizer_dir, reference_out, batch_size=1024)
    step_files, reference_files = _files(step_out), _files(reference_out)
    assert step_files.keys() == reference_files.keys()
    assert any("input_ids" in name for name in step_files), sorted(step_files)
    different = sorted(k for k in step_files if step_files[k] != reference_files[k])
    assert different == []
    splits = meta["splits"]
    assert splits["validation"]["documents"] > 0 and splits["train"]["documents"] > 0
    assert splits["train"]["tokens"] > splits["train"]["documents"] * 10


def test_the_direct_path_is_taken_for_our_tokenizers_and_gives_levanters_ids(tokenizer_dir):
    from levanter.data.text import BatchTokenizer

    from tasks.data.batch_tokenizer import DirectBatchTokenizer
    from tasks.data.tokenizer_files import load_tokenizer

    batch = [{"text": "In the beginning God created the heaven and the earth."}, {"text": "é ☃"}]
    direct = DirectBatchTokenizer(load_tokenizer(tokenizer_dir), enforce_bos=True)
    assert direct.direct  # else the speed-up silently never happens
    expected = BatchTokenizer(load_tokenizer(tokenizer_dir), enforce_bos=True)(batch)
    assert direct(batch) == expected
    assert expected[0]["input_ids"][0] == direct.tokenizer.bos_token_id


def test_a_tokenizer_that_truncates_goes_through_levanter(tokenizer_dir):
    """Truncation turned on in the Rust tokenizer: transformers' call turns it off again, a
    direct call would not; the call must go through levanter."""
    from levanter.data.text import BatchTokenizer

    from tasks.data.batch_tokenizer import DirectBatchTokenizer
    from tasks.data.tokenizer_files import load_tokenizer

    direct = DirectBatchTokenizer(load_tokenizer(tokenizer_dir), enforce_bos=True)
    direct.tokenizer.backend_tokenizer.enable_truncation(max_length=4)
    batch = [{"text": "And God said, Let there be light: and there was light."}]
    plain = load_tokenizer(tokenizer_dir)
    assert direct(batch) == BatchTokenizer(plain, enforce_bos=True)(batch)
    assert len(direct(batch)[0]["input_ids"]) > 4


def test_a_truncated_shard_fails_the_step_and_leaves_no_reader_behind(tokenizer_dir, tmp_path):
    """The shards are read in a background thread: its error must reach the step."""
    import gzip
    import threading

    from tasks.data.tokenize import tokenize

    dataset = tmp_path / "dataset"
    dataset.mkdir()
    whole = Path(SHARD).read_bytes()
    (dataset / "a.jsonl.gz").write_bytes(whole)
    (dataset / "b.jsonl.gz").write_bytes(whole[: len(whole) // 2])
    with pytest.raises((EOFError, gzip.BadGzipFile)):
        tokenize.fn.__wrapped__(
            dataset=str(dataset),
            tokenizer=tokenizer_dir,
            name="broken",
            batch_size=16,
            output_path=str(tmp_path / "out"),
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("lmflows-tokenize")]


def test_a_failing_tokenizer_stops_the_reader(tokenizer_dir, tmp_path, monkeypatch):
    import threading

    from tasks.data import batch_tokenizer
    from tasks.data.tokenize import tokenize

    def fail(self, batch):
        raise RuntimeError("tokenizer broke")

    monkeypatch.setattr(batch_tokenizer.DirectBatchTokenizer, "__call__", fail)
    with pytest.raises(RuntimeError, match="tokenizer broke"):
        tokenize.fn.__wrapped__(
            dataset=SHARD,
            tokenizer=tokenizer_dir,
            name="broken",
            batch_size=4,  # many batches still unread when the first one fails
            output_path=str(tmp_path / "out"),
        )
    assert not [t for t in threading.enumerate() if t.name.startswith("lmflows-tokenize")]


def test_a_tokenizer_class_with_its_own_encoding_goes_through_levanter(tokenizer_dir):
    """A subclass that changes the text before the Rust tokenizer (as CpmTokenizerFast does)
    must not take the direct path, which would skip its change."""
    from levanter.data.text import BatchTokenizer
    from transformers import PreTrainedTokenizerFast

    from tasks.data.batch_tokenizer import DirectBatchTokenizer

    class Shouting(PreTrainedTokenizerFast):
        def _batch_encode_plus(self, batch_text_or_text_pairs, *args, **kwargs):
            upper = [text.upper() for text in batch_text_or_text_pairs]
            return super()._batch_encode_plus(upper, *args, **kwargs)

    shouting = Shouting.from_pretrained(tokenizer_dir)
    direct = DirectBatchTokenizer(shouting, enforce_bos=True)
    assert not direct.direct
    batch = [{"text": "And God saw the light, that it was good."}]
    expected = BatchTokenizer(Shouting.from_pretrained(tokenizer_dir), enforce_bos=True)(batch)
    assert direct(batch) == expected
