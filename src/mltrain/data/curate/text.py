"""Per-document text functions (no Spark): normalisation and the exact-duplicate key.

They run inside Spark tasks and in unit tests alike, so they take and return plain str.
"""

from __future__ import annotations

import re
import unicodedata

import xxhash

_HSPACE = re.compile(r"[^\S\n]+")  # any whitespace but newline: tabs, NBSP, other Unicode spaces
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """Unicode NFC; CRLF/CR -> LF; runs of spaces/tabs -> one space; lines stripped; 2+ blank lines -> 1.

    NFC first so that the same words typed with combining marks or precomposed characters hash the same.
    """
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    lines = (_HSPACE.sub(" ", line).strip() for line in text.split("\n"))
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def doc_hash(text: str) -> str:
    """The exact-duplicate key: xxh3-128 of the UTF-8 text (hex); collisions are negligible at 2^-64 odds."""
    return xxhash.xxh3_128_hexdigest(text.encode("utf-8"))
