"""MinHash signatures over word n-grams and their LSH band keys (no Spark: numpy per document).

Each document's shingles (lower-cased word n-grams) are hashed to 32 bits (xxh32), then permuted by
`bands * rows` universal hash functions h(x) = (a*x + b) mod (2^61 - 1), truncated to 32 bits; the
signature is the minimum of each. Two documents with Jaccard similarity s agree on one value with
probability s, so on a whole band of r values with s^r, and share at least one of b bands with
1 - (1 - s^r)^b: the S-curve that sets the false positive/negative trade-off (docs/curate.md).
Coefficients come from a seeded generator, so signatures are the same on every machine.
"""

from __future__ import annotations

import re

import numpy as np
import xxhash

_MERSENNE = np.uint64((1 << 61) - 1)
_MAX32 = np.uint64((1 << 32) - 1)
_WORD = re.compile(r"\w+")


def permutations(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) coefficients, each below 2^32 so a*x + b never overflows uint64 for 32-bit x."""
    gen = np.random.Generator(np.random.PCG64(seed))
    a = gen.integers(1, 1 << 32, size=n, dtype=np.uint64)
    b = gen.integers(0, 1 << 32, size=n, dtype=np.uint64)
    return a, b


def shingles(text: str, n: int) -> np.ndarray:
    """Unique 32-bit hashes of the lower-cased word n-grams (a short document is one shingle)."""
    words = _WORD.findall(text.lower())
    if not words:
        return np.zeros(0, dtype=np.uint64)
    grams = {" ".join(words[i : i + n]) for i in range(max(1, len(words) - n + 1))}
    return np.fromiter((xxhash.xxh32_intdigest(g.encode("utf-8")) for g in grams), dtype=np.uint64, count=len(grams))


def signature(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The MinHash signature (uint32, len(a) values); all-max for a document without shingles."""
    if hashes.size == 0:
        return np.full(a.size, 0xFFFFFFFF, dtype=np.uint32)
    phv = ((hashes[:, None] * a[None, :] + b[None, :]) % _MERSENNE) & _MAX32
    return phv.min(axis=0).astype(np.uint32)


def band_keys(sig: np.ndarray, bands: int, rows: int) -> list[int]:
    """One signed 64-bit key per band (Spark's LongType): equal keys = the band's r values all agree."""
    keys = []
    for i in range(bands):
        k = xxhash.xxh64_intdigest(sig[i * rows : (i + 1) * rows].tobytes())
        keys.append(k - (1 << 64) if k >= 1 << 63 else k)
    return keys


def similarity(sig_a: bytes, sig_b: bytes) -> float:
    """Estimated Jaccard similarity: the fraction of signature values that agree."""
    x, y = np.frombuffer(sig_a, dtype=np.uint32), np.frombuffer(sig_b, dtype=np.uint32)
    return float(np.mean(x == y)) if x.size else 0.0


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(two documents of Jaccard similarity s share a band) = 1 - (1 - s^r)^b."""
    return 1.0 - (1.0 - s**rows) ** bands


def curve_threshold(bands: int, rows: int) -> float:
    """Where the S-curve is steepest, about (1/b)^(1/r): the similarity banding alone cuts at."""
    return (1.0 / bands) ** (1.0 / rows)
