"""MinHash signatures are the same values as the first implementation's (a reference kept here):
the faster code must not change which documents a dedup keeps."""

from __future__ import annotations

import random

import numpy as np
import pytest
import xxhash

from tasks.data import minhash
from tasks.data.shards import iter_documents


def _reference_signature(text: str, ngram: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    hashes = np.fromiter(
        (xxhash.xxh32_intdigest(s.encode()) for s in set(minhash.shingles(text, ngram))),
        dtype=np.uint64,
    )
    permuted = (np.outer(hashes, a) + b) % minhash.MERSENNE_PRIME & minhash.MAX_HASH
    return permuted.min(axis=0).astype(np.uint32)


def _texts() -> list[str]:
    texts = [d["text"] for d in iter_documents("data/kjv")][::25]
    texts += [
        "", "   ", "!!!", "one", "a b c d e", "a b c d e f", "tab\tsep\x1cfs\x0bvt word_x 3.14",
        "Ünïcode wörds ﬁ ligature and ＦＵＬＬ width", "é " * 10, "日本語 の テキスト です ね 本当",
    ]  # fmt: skip
    rng = random.Random(1)
    alphabet = "ab c_\t\n.,'é1\x1c\x85\u2028Zz"
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 60))) for _ in range(200)]
    return texts


@pytest.mark.parametrize("ngram, seed", [(5, 0), (3, 7), (1, 1)])
def test_signatures_are_the_reference_values(ngram, seed):
    a, b = minhash.permutations(64, seed)
    texts = _texts()
    for text in texts:
        expected = _reference_signature(text, ngram, a, b)
        assert (minhash.signature(text, ngram, a, b) == expected).all(), text[:60]
    for text, (key, sig) in zip(texts, minhash.signatures_of(texts, ngram, 64, seed, True)):
        assert key == minhash.exact_key(text)
        assert (sig == _reference_signature(text, ngram, a, b)).all()


IMPLEMENTATIONS = {
    "compiled": minhash.compiled_min_hash,  # numba, what dedup runs
    "numpy": minhash._min_hash_numpy,  # where numba cannot be imported
}


def test_numba_compiles_the_kernel_dedup_runs():
    """numba is a dependency: a missing or broken one would silently cost ~12x in dedup."""
    assert minhash.compiled_min_hash is not None


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_both_min_hash_implementations_give_the_reference_values(implementation):
    min_hash = IMPLEMENTATIONS[implementation]
    rng = np.random.default_rng(3)
    for num_perm, seed in ((128, 0), (64, 9)):
        a, b = minhash.permutations(num_perm, seed)
        for rows in (1, 2, 7, 700, 5000):
            hashes = rng.integers(0, 1 << 32, size=rows, dtype=np.uint64)
            expected = (np.outer(hashes, a) + b) % minhash.MERSENNE_PRIME & minhash.MAX_HASH
            assert (min_hash(hashes, a, b) == expected.min(axis=0).astype(np.uint32)).all()


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
def test_the_mersenne_fold_is_exact_where_it_must_correct(implementation):
    # a*h + b on and around multiples of p (a*h + b = m*p needs the correction step)
    p = (1 << 61) - 1
    hits = 0
    for h in (0xFFFFFFFF, 0xFFFFFFF0, 0xF0000001):
        for m in range(1, 8):
            a = (m * p) // h
            for k in range(-8, 9):
                b = m * p - a * h + k
                if not (0 < a < 1 << 32 and 0 <= b < 1 << 32):
                    continue
                x = a * h + b
                hits += x % p < 8 and (x & p) + (x >> 61) >= p
                arrays = [np.array([v], dtype=np.uint64) for v in (h, a, b)]
                got = int(IMPLEMENTATIONS[implementation](*arrays)[0])
                assert got == x % p & 0xFFFFFFFF, (h, m, k)
    assert hits > 0  # the rare branch ran
