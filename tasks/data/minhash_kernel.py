"""The MinHash minimum as one compiled loop (numba), when numba is importable.

`tasks.data.minhash._min_hash` computes min over shingles of ((a*h + b) mod (2**61 - 1)) &
0xFFFFFFFF with numpy: about nine passes over a shingles x permutations uint64 array per
document, most of fuzzy dedup's time. This loop computes the same values (the same folding
of the Mersenne modulus, the same low 32 bits) in one pass with no temporaries, ~12x faster
(benches/dedup_throughput.py). Written here because no MinHash library computes datasketch's
family this way; `tests/test_minhash.py` checks it against the numpy expression, including
the rare values where the fold reaches the modulus.

`min_hash` is None where numba cannot be imported; the caller then uses numpy. The compiled
code is cached beside this file (numba's `cache=True`), so a spawned dedup worker loads it
rather than compiling it (~0.5 s) again.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


def _compile() -> Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray] | None:
    try:
        import numba
    except ImportError:  # numba has no wheel for this platform or Python: numpy instead
        return None

    @numba.njit(cache=True, nogil=True)
    def min_hash(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        columns = a.shape[0]
        out = np.full(columns, 0xFFFFFFFF, dtype=np.uint32)
        prime = np.uint64(2305843009213693951)  # 2**61 - 1
        shift = np.uint64(61)
        low = np.uint64(0xFFFFFFFF)
        for row in range(hashes.shape[0]):
            h = hashes[row]
            for column in range(columns):
                x = a[column] * h + b[column]  # < 2**64: a, b, h < 2**32
                folded = (x & prime) + (x >> shift)
                if folded >= prime:
                    folded -= prime
                value = np.uint32(folded & low)
                if value < out[column]:
                    out[column] = value
        return out

    return min_hash


min_hash = _compile()
