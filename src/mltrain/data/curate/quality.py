"""Gopher (Rae et al. 2021) and C4 (Raffel et al. 2020) style quality rules, one function per rule.

Each rule takes the document's `TextStats` and the threshold and says whether the document fails it.
`first_failure` applies them in a fixed order and returns the first failing rule's name, so every
removed document is counted under exactly one rule in the report.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

from mltrain.config import QualityFilterConfig

BULLETS = ("\u2022", "\u2023", "\u25aa", "\u25cf", "\u2013", "\u00b7", "-", "*", "\u2043", "\u25e6")
END_PUNCTUATION = (".", "!", "?", '"', "'", "\u201d", "\u2019", "\u3002")


@dataclass(frozen=True)
class TextStats:
    """Word, line and paragraph views of one (normalised) document, computed once for all rules."""

    text: str

    @cached_property
    def words(self) -> list[str]:
        return self.text.split()

    @cached_property
    def lines(self) -> list[str]:
        return [ln.strip() for ln in self.text.split("\n") if ln.strip()]

    @cached_property
    def paragraphs(self) -> list[str]:
        return [p.strip() for p in self.text.split("\n\n") if p.strip()]


def _repeated_fraction(items: list[str]) -> float:
    """Fraction of items equal to an earlier item (Gopher's duplicate line/paragraph fraction)."""
    if not items:
        return 0.0
    return (len(items) - len(set(items))) / len(items)


def too_few_words(s: TextStats, limit: float) -> bool:
    return len(s.words) < limit


def too_many_words(s: TextStats, limit: float) -> bool:
    return len(s.words) > limit


def mean_word_length(s: TextStats) -> float:
    return sum(len(w) for w in s.words) / len(s.words) if s.words else 0.0


def short_words(s: TextStats, limit: float) -> bool:
    return mean_word_length(s) < limit


def long_words(s: TextStats, limit: float) -> bool:
    return mean_word_length(s) > limit


def symbol_word_ratio(s: TextStats) -> float:
    """('#' + '...' + the ellipsis character) per word."""
    symbols = s.text.count("#") + s.text.count("...") + s.text.count("\u2026")
    return symbols / max(1, len(s.words))


def too_many_symbols(s: TextStats, limit: float) -> bool:
    return symbol_word_ratio(s) > limit


def bullet_fraction(s: TextStats) -> float:
    return sum(ln.startswith(BULLETS) for ln in s.lines) / len(s.lines) if s.lines else 0.0


def too_many_bullets(s: TextStats, limit: float) -> bool:
    return bullet_fraction(s) > limit


def punctuation_fraction(s: TextStats) -> float:
    return sum(ln.endswith(END_PUNCTUATION) for ln in s.lines) / len(s.lines) if s.lines else 0.0


def too_few_punctuated_lines(s: TextStats, limit: float) -> bool:
    return punctuation_fraction(s) < limit


def too_many_duplicate_lines(s: TextStats, limit: float) -> bool:
    return _repeated_fraction(s.lines) > limit


def too_many_duplicate_paragraphs(s: TextStats, limit: float) -> bool:
    return _repeated_fraction(s.paragraphs) > limit


# (reason in the report, config key, rule), in the order they are applied
RULES: tuple[tuple[str, str, Callable[[TextStats, float], bool]], ...] = (
    ("too-few-words", "min_words", too_few_words),
    ("too-many-words", "max_words", too_many_words),
    ("short-words", "min_mean_word_length", short_words),
    ("long-words", "max_mean_word_length", long_words),
    ("symbols", "max_symbol_word_ratio", too_many_symbols),
    ("bullet-lines", "max_bullet_line_fraction", too_many_bullets),
    ("unpunctuated-lines", "min_punctuation_line_fraction", too_few_punctuated_lines),
    ("duplicate-lines", "max_duplicate_line_fraction", too_many_duplicate_lines),
    ("duplicate-paragraphs", "max_duplicate_paragraph_fraction", too_many_duplicate_paragraphs),
)


def first_failure(text: str, cfg: QualityFilterConfig) -> str | None:
    """The name of the first rule the document fails, or None when it passes every enabled rule."""
    stats = TextStats(text)
    for reason, key, rule in RULES:
        limit = getattr(cfg, key)
        if limit is not None and rule(stats, limit):
            return reason
    return None
