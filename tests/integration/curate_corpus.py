"""A corpus with planted duplicates and junk whose fate under the default curate thresholds is known."""

from __future__ import annotations

import json
import random
from pathlib import Path

from mltrain.data.curate.minhash import shingles

_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _word(rng: random.Random, lo: int = 3, hi: int = 8) -> str:
    return "".join(rng.choice(_LETTERS) for _ in range(rng.randint(lo, hi)))


def good_doc(rng: random.Random, lines: int = 12, words_per_line: int = 14) -> str:
    """Passes every default quality rule: prose lines ending in full stops, no repeats."""
    return "\n".join(" ".join(_word(rng) for _ in range(words_per_line)).capitalize() + "." for _ in range(lines))


def edited(doc: str, k: int, rng: random.Random) -> str:
    """`doc` with k evenly spaced words replaced: each kills up to n of its word n-grams."""
    lines = [ln.split(" ") for ln in doc.split("\n")]
    flat = [(i, j) for i, ln in enumerate(lines) for j in range(len(ln))]
    step = len(flat) // (k + 1)
    for n in range(1, k + 1):
        i, j = flat[n * step]
        lines[i][j] = "zz" + _word(rng)
    return "\n".join(" ".join(ln) for ln in lines)


def jaccard(a: str, b: str, n: int = 5) -> float:
    sa, sb = set(shingles(a, n).tolist()), set(shingles(b, n).tolist())
    return len(sa & sb) / len(sa | sb)


def junk(rng: random.Random) -> dict[str, str]:
    """One document per quality rule, each failing that rule first (max_words is set to 1000 in the test)."""
    para = [good_doc(rng, lines=5) for _ in range(4)]
    short_para = "Same short paragraph here."
    return {
        "too-few-words": "Only a handful of words in this one.",
        "too-many-words": " ".join(_word(rng) for _ in range(1100)) + ".",
        "short-words": " ".join(_word(rng, 1, 2) for _ in range(80)) + ".",
        "long-words": " ".join(_word(rng, 14, 18) for _ in range(80)) + ".",
        "symbols": good_doc(rng) + "\n" + " ".join("#tag" for _ in range(20)) + ".",
        "bullet-lines": "\n".join("- " + " ".join(_word(rng) for _ in range(8)) + "." for _ in range(10)),
        "unpunctuated-lines": "\n".join(" ".join(_word(rng) for _ in range(10)) for _ in range(8)),
        "duplicate-lines": good_doc(rng, lines=6) + "\n" + "\n".join(["This line says the same thing again."] * 5),
        "duplicate-paragraphs": "\n\n".join(para + [short_para] * 6),
    }


def build(root: Path, seed: int = 7, n_good: int = 120) -> dict:
    """Write the corpus (jsonl + parquet + txt) under root/raw; return what the test expects."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    raw = root / "raw"
    raw.mkdir(parents=True)
    good = [good_doc(rng) for _ in range(n_good)]
    exact = [good[0], good[1].replace(" ", "  \t", 3), good[2]]  # the 2nd differs only in whitespace
    other = good_doc(rng)
    cafe = "Caf\u00e9 " + other
    cafe_nfd = "Cafe\u0301 " + other  # the same text after NFC
    near_hi = [edited(good[4], 1, rng), edited(good[5], 2, rng)]  # J ~ 0.95, ~ 0.9
    near_lo = [edited(good[6], 10, rng), edited(good[7], 16, rng)]  # J ~ 0.55, ~ 0.35
    bad = junk(rng)
    records = [{"text": t} for t in good[:60] + exact + [cafe, cafe_nfd] + near_hi]
    lines = [json.dumps(r) for r in records]
    lines.insert(3, "{not json")  # skipped by the reader, counted
    lines.append(json.dumps({"text": "   "}))  # empty: skipped by the reader
    (raw / "a.jsonl").write_text("\n".join(lines) + "\n")
    texts = good[60:] + near_lo + list(bad.values())
    pq.write_table(pa.table({"text": texts, "id": list(range(len(texts)))}), raw / "b.parquet")
    (raw / "c.txt").write_text(good[8] + "\n")  # a plain-text file: one document, an exact copy of good[8]
    return {
        "good": good,
        "near_hi": near_hi,
        "near_lo": near_lo,
        "near_sims": [
            jaccard(good[4], near_hi[0]),
            jaccard(good[5], near_hi[1]),
            jaccard(good[6], near_lo[0]),
            jaccard(good[7], near_lo[1]),
        ],  # fmt: skip
        "junk": bad,
        "cafe": cafe,
        "docs_read": len(records) + len(good[60:]) + len(near_lo) + len(bad) + 1,
    }
