"""MinHash signatures and an LSH index, in numpy.

Written here rather than taken from datasketch: datasketch hashes shingles with sha1 in a
Python loop and builds one `MinHash` object per document, and its LSH keeps every key in
memory as Python objects; this module keeps only a band-hash -> document-number map and the
signatures of kept documents. `benches/dedup_throughput.py` compares the two on the same
documents (same shingles, permutations, bands and threshold; same recall). Workers import only
numpy, xxhash and numba (its compiled kernel is cached on disk) so that spawned processes
start fast.
"""

from __future__ import annotations

import functools
import hashlib
import re
import threading
import unicodedata

import numpy as np
import xxhash

from tasks.data.minhash_kernel import min_hash as compiled_min_hash

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
    """MinHash of the word n-gram set: min over shingles of (a*h + b) mod p, 32-bit, with h
    the xxh32 of the shingle's UTF-8 bytes."""
    return _signature(normalize(text), ngram, a, b)


def _signature(normalized: str, ngram: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`signature` of an already normalised text, the same values computed faster: the
    shingles are joined as bytes and hashed in C (`map`), not deduplicated first (a repeated
    shingle cannot change a minimum), and the Mersenne modulus is taken with shifts."""
    words = _words(normalized)
    if len(words) <= ngram:
        hashes = np.array([xxhash.xxh32_intdigest(b" ".join(words))], dtype=np.uint64)
    else:
        grams = map(b" ".join, zip(*(words[i:] for i in range(ngram))))
        count = len(words) - ngram + 1
        hashes = np.fromiter(map(xxhash.xxh32_intdigest, grams), dtype=np.uint64, count=count)
    return _min_hash(hashes, a, b)


# Bytes that are not ASCII word characters become spaces: for ASCII text, `split()` then gives
# exactly the UTF-8 bytes of `_WORD.findall` (in Unicode mode, ASCII \w is [A-Za-z0-9_]).
_NOT_WORD = bytes.maketrans(
    bytes(c for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")),
    b" " * sum(1 for c in range(128) if not (chr(c).isalnum() or chr(c) == "_")),
)


def _words(normalized: str) -> list[bytes]:
    """The UTF-8 bytes of each word (`_WORD.findall`) of a normalised text."""
    if normalized.isascii():
        return normalized.encode().translate(_NOT_WORD).split()
    return [word.encode() for word in _WORD.findall(normalized)]


_SHIFT = np.uint64(61)


def _min_hash(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over rows of ((a*h + b) mod (2**61 - 1)) & 0xFFFFFFFF, as uint32: the compiled
    loop of `minhash_kernel` where numba is importable, else `_min_hash_numpy`."""
    if compiled_min_hash is not None:
        return compiled_min_hash(hashes, a, b)
    return _min_hash_numpy(hashes, a, b)


def _min_hash_numpy(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """min over rows of ((a*h + b) mod (2**61 - 1)) & 0xFFFFFFFF, as uint32.

    a*h + b < 2**64 (a, b, h < 2**32), so x mod p = (x & p) + (x >> 61), less p once if that
    reaches p (p = 2**61 - 1): exact, and cheaper than numpy's uint64 division."""
    x, folded = _buffers(len(hashes), len(a))
    np.multiply(hashes[:, None], a, out=x)
    x += b
    np.bitwise_and(x, MERSENNE_PRIME, out=folded)
    x >>= _SHIFT
    folded += x
    over = folded >= MERSENNE_PRIME
    if over.any():
        folded[over] -= MERSENNE_PRIME
    return folded.astype(np.uint32).min(axis=0)  # the low 32 bits: & MAX_HASH


_BUFFERS = threading.local()
_MAX_BUFFERED_ROWS = 16384  # 2 x 16 MB at 128 permutations


def _buffers(rows: int, columns: int) -> tuple[np.ndarray, np.ndarray]:
    """Two rows x columns uint64 scratch arrays, reused (a fresh 0.7 MB array per document
    cost its page faults every time); one pair per thread."""
    if rows > _MAX_BUFFERED_ROWS:  # a huge document: its own arrays, not kept
        return np.empty((rows, columns), np.uint64), np.empty((rows, columns), np.uint64)
    held = getattr(_BUFFERS, "pair", None)
    if held is None or held[0].shape[0] < rows or held[0].shape[1] != columns:
        size = max(rows, 1024)
        held = (np.empty((size, columns), np.uint64), np.empty((size, columns), np.uint64))
        _BUFFERS.pair = held
    return held[0][:rows], held[1][:rows]


def signatures_of(
    texts: list[str], ngram: int, num_perm: int, seed: int, fuzzy: bool
) -> list[tuple[bytes, np.ndarray | None]]:
    """Worker entry point: (exact key, signature or None) per text."""
    a, b = _permutations(num_perm, seed)
    result = []
    for text in texts:
        normalized = normalize(text)
        key = hashlib.blake2b(normalized.encode(), digest_size=16).digest()  # exact_key
        result.append((key, _signature(normalized, ngram, a, b) if fuzzy else None))
    return result


@functools.lru_cache(maxsize=8)
def _permutations(num_perm: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    a, b = permutations(num_perm, seed)
    a.flags.writeable = b.flags.writeable = False
    return a, b


class LshIndex:
    """Banded LSH over signatures of kept documents; verifies candidates by estimated
    Jaccard similarity (fraction of equal signature positions)."""

    def __init__(self, num_perm: int, bands: int, threshold: float) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm={num_perm} must be a multiple of bands={bands}")
        self.rows = num_perm // bands
        self.bands = bands
        self.threshold = threshold
        self.buckets: list[dict[bytes, int]] = [{} for _ in range(bands)]
        self.signatures: list[np.ndarray] = []

    def _band_keys(self, sig: np.ndarray) -> list[bytes]:
        """Each band's bytes, as they are: a dict key needs no hash of ours (one numpy call
        instead of a hash call per band; equal bands are equal keys, no collisions)."""
        band = np.dtype((np.void, self.rows * sig.itemsize))
        return np.ascontiguousarray(sig).view(band).tolist()

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
