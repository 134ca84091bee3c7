#!/usr/bin/env python3
"""Train/val text for configs/shakespeare-char.yaml: first 90% of the characters train, last 10% val.

    python scripts/shakespeare_char_data.py --input input.txt   # Tiny Shakespeare (public domain), split
    python scripts/shakespeare_char_data.py                     # no download: a generated stand-in play

The stand-in is a deterministic, play-shaped text (speaker lines, verse, a ~60-character alphabet)
made from a fixed word list, so the recipe runs offline and in tests; its losses are not comparable
with published Tiny Shakespeare numbers. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SPEAKERS = [
    "FIRST CITIZEN",
    "SECOND CITIZEN",
    "MENENIUS",
    "CORIOLANUS",
    "VOLUMNIA",
    "ROMEO",
    "JULIET",
    "NURSE",
    "KING RICHARD III",
    "GLOUCESTER",
    "QUEEN ELIZABETH",
    "LADY ANNE",
    "PROSPERO",
    "MIRANDA",
    "All",
]
_WORD_TEXT = (
    "thou thee thy thine art hath doth shall shalt wilt would should good lord my lady sir king queen "
    "love heart blood death life night day sweet fair noble gentle brother sister father mother son "
    "daughter grace honour crown sword war peace heaven earth soul word tongue eyes hand time world "
    "come go speak hear tell know make give take stand fight die live weep swear pray stay fly bear "
    "the a and of to in that is not with for this but be as by so what all no yet now then here there "
    "o ay nay well why how whence hither thither ere upon against before after where when more most "
    "true false dead young old poor proud great little high low"
)
WORDS = _WORD_TEXT.split()
PUNCT = [",", ",", ",", ";", ":", ".", ".", "!", "?", ""]


def stand_in(chars: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    out: list[str] = []
    size = 0
    while size < chars:
        lines = [rng.choice(SPEAKERS) + ":"]
        for _ in range(rng.randint(1, 6)):
            words = [rng.choice(WORDS) for _ in range(rng.randint(4, 10))]
            line = " ".join(words) + rng.choice(PUNCT)
            lines.append(line[0].upper() + line[1:])
        block = "\n".join(lines) + "\n\n"
        out.append(block)
        size += len(block)
    return "".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="a text to split (e.g. Tiny Shakespeare's input.txt)")
    ap.add_argument("--out", type=Path, default=Path("data/shakespeare-char/text"), help="writes train.txt, val.txt")
    ap.add_argument("--chars", type=int, default=300_000, help="stand-in size in characters")
    ap.add_argument("--val-fraction", type=float, default=0.1)
    a = ap.parse_args()
    text = a.input.read_text(encoding="utf-8") if a.input else stand_in(a.chars)
    cut = int(len(text) * (1 - a.val_fraction))
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "train.txt").write_text(text[:cut], encoding="utf-8")
    (a.out / "val.txt").write_text(text[cut:], encoding="utf-8")
    print(f"{a.out}/train.txt: {cut:,} chars, {a.out}/val.txt: {len(text) - cut:,} chars")


if __name__ == "__main__":
    main()
