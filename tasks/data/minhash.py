"""MinHash signatures and an LSH index, in numpy.

Written here rather than taken from datasketch: datasketch hashes shingles with sha1 in a
Python loop and builds one `MinHash` object per document (~10x slower per document here), and
its LSH keeps every key in memory as Python objects; this module keeps only a band-hash ->
document-number map and the signatures of kept documents. Workers import only numpy and
xxhash so that spawned processes start fast.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

import numpy as np
import xxhash

MERSENNE_PRIME = np.uint64((1 << 61) - 1)
MAX_HASH = np.uint64(0xFFFFFFFF)
_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> str:
    """Case-, width- and whitespace-insensitive form used for exact duplicates."""
    return " ".join(unicodedata.normalize("NFKC", text).lower().split())


def exact_key(text: str) -> bytes:
    return hashlib.blake2b(normalize(text).encode(), digest_size=16).digest()


def permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.RandomState(seed)
    a = rng.randint(1, 1 << 32, size=num_perm, dtype=np.uint64)
    b = rng.randint(0, 1 << 32, size=num_perm, dtype=np.uint64)
    return a, b


def shingles(text: str, ngram: int) -> list[str]:
    words = _WORD.findall(normalize(text))
    if len(words) <= ngram:
        return [" ".join(words)] if words else [""]
    return [" ".join(words[i : i + ngram]) for i in range(len(words) - ngram + 1)]


def signature(text: str, ngram: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """MinHash of the word n-gram set: min over shingles of (a*h + b) mod p, 32-bit."""
    hashes = np.fromiter(
        (xxhash.xxh32_intdigest(s.encode()) for s in set(shingles(text, ngram))), dtype=np.uint64
    )
    permuted = (np.outer(hashes, a) + b) % MERSENNE_PRIME & MAX_HASH
    return permuted.min(axis=0).astype(np.uint32)


def signatures_of(
    texts: list[str], ngram: int, num_perm: int, seed: int, fuzzy: bool
) -> list[tuple[bytes, np.ndarray | None]]:
    """Worker entry point: (exact key, signature or None) per text."""
    a, b = permutations(num_perm, seed)
    return [(exact_key(t), signature(t, ngram, a, b) if fuzzy else None) for t in texts]


class LshIndex:
    """Banded LSH over signatures of kept documents; verifies candidates by estimated
    Jaccard similarity (fraction of equal signature positions)."""

    def __init__(self, num_perm: int, bands: int, threshold: float) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
        self.rows = num_perm // bands
        self.bands = bands
        self.threshold = threshold
        self.buckets: list[dict[int, int]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []

    def _band_keys(self, sig: np.ndarray) -> list[int]:
        view = sig.reshape(self.bands, self.rows)
        return [xxhash.xxh64_intdigest(row.tobytes()) for row in view]

    def query(self, sig: np.ndarray) -> tuple[int, float] | None:
        """The best kept document at or above the threshold, with its similarity."""
        best = None
        seen: set[int] = set()
        for band, key in enumerate(self._band_keys(sig)):
            doc = self.buckets[band].get(key)
            if doc is None or doc in seen:
                continue
            seen.add(doc)
            similarity = float(np.mean(self.signatures[doc] == sig))
            if similarity >= self.threshold and (best is None or similarity > best[1]):
                best = (doc, similarity)
        return best

    def insert(self, sig: np.ndarray) -> int:
        doc = len(self.signatures)
        self.signatures.append(sig)
        for band, key in enumerate(self._band_keys(sig)):
            self.buckets[band].setdefault(key, doc)
        return doc
