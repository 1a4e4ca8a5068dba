"""levanter's `BatchTokenizer`, calling the Rust tokenizer directly when that gives the same
token ids.

Why not levanter's own `__call__`: it goes through transformers' `__call__`, which asks the
Rust tokenizer for character offsets (`encode_batch`) that levanter never uses, converts every
`tokenizers.Encoding` into Python dicts and a `BatchEncoding`, and levanter then takes them
apart again, row by row. `encode_batch_fast` gives the same ids without the offsets (~20% less
Rust work on the bundled corpus; benches/tokenize_throughput.py). The direct path is taken only
when the result is the same by construction (no padding, truncation, attention mask or
long-string workaround, and a tokenizer whose outputs are only `input_ids`); otherwise every
call goes to levanter (so does a tokenizer class that overrides transformers' encoding
methods). The cache metadata (`metadata`) is levanter's, so a cache written
either way is the same cache (tests/test_tokenize_cache.py compares the files).
"""

from __future__ import annotations

from collections.abc import Sequence

from levanter.data.text import BatchTokenizer
from transformers import PreTrainedTokenizerFast

# The transformers methods between `tokenizer(texts)` and the Rust `encode_batch`: a subclass
# that overrides one (e.g. CpmTokenizerFast segments Chinese text first) is not "the Rust
# tokenizer plus bookkeeping", so it goes through levanter.
_ENCODING_PATH = ("__call__", "_call_one", "batch_encode_plus", "_batch_encode_plus")


def _overrides_encoding(cls: type) -> bool:
    return any(
        getattr(cls, name) is not getattr(PreTrainedTokenizerFast, name) for name in _ENCODING_PATH
    )


class DirectBatchTokenizer(BatchTokenizer):
    """`BatchTokenizer` with a direct `encode_batch` path (see the module docstring)."""

    def __init__(self, tokenizer, **kwargs) -> None:
        super().__init__(tokenizer, **kwargs)
        self.direct = (
            isinstance(tokenizer, PreTrainedTokenizerFast)
            and not _overrides_encoding(type(tokenizer))
            and self.padding is False
            and not self.return_attention_mask
            and not self._needs_long_sequence_workaround
            and set(tokenizer("hi there", return_attention_mask=False).keys()) == {"input_ids"}
        )

    def __call__(self, batch: Sequence[dict]) -> list[dict]:
        backend = self.tokenizer.backend_tokenizer if self.direct else None
        # transformers turns the backend's truncation and padding off before each call; a
        # direct call would apply them if someone turned them on since.
        if backend is None or backend.truncation is not None or backend.padding is not None:
            return super().__call__(batch)
        texts = [example[self.text_field] for example in batch]
        # The same text levanter builds (BatchTokenizer.__call__), tokenized the way
        # transformers does (`_batch_encode_plus`: add_special_tokens, not pre-split).
        if self._need_to_add_bos:
            texts = [self.tokenizer.bos_token + " " + text for text in texts]
        if self._need_to_add_eos:
            texts = [text + " " + self.tokenizer.eos_token for text in texts]
        # encode_batch_fast (tokenizers >= 0.20) skips the character offsets transformers
        # would compute and levanter discards: the same ids, ~20% less work.
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        encodings = encode(texts, add_special_tokens=True)
        return [{"input_ids": encoding.ids} for encoding in encodings]
