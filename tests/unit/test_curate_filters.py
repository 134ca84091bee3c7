"""The per-document functions of `data curate`, without Spark: normalisation, each quality rule at its
threshold, MinHash similarity and the LSH S-curve."""

from __future__ import annotations

import pytest

from mltrain.config import QualityFilterConfig
from mltrain.data.curate import minhash, quality
from mltrain.data.curate.quality import TextStats, first_failure
from mltrain.data.curate.text import doc_hash, normalize

PROSE = "\n".join(f"Line {i} says something plain about the weather and the sea today." for i in range(8))


def test_normalize_nfc_whitespace_and_blank_lines():
    assert normalize("Cafe\u0301\t\tau  lait \r\n\r\n\r\n\n  next\u00a0line  ") == "Caf\u00e9 au lait\n\nnext line"
    assert doc_hash(normalize("Cafe\u0301 x")) == doc_hash(normalize("Caf\u00e9  x"))
    assert doc_hash("a") != doc_hash("b")


def test_the_prose_document_passes_every_default_rule():
    assert first_failure(PROSE, QualityFilterConfig()) is None


@pytest.mark.parametrize(
    ("rule", "key", "just_passes", "just_fails"),
    [
        (quality.too_few_words, "min_words", " ".join(["word"] * 50), " ".join(["word"] * 49)),
        (quality.too_many_words, "max_words", " ".join(["word"] * 100), " ".join(["word"] * 101)),
        (quality.short_words, "min_mean_word_length", "abc abc", "abc ab"),
        (quality.long_words, "max_mean_word_length", "abcdefghij", "abcdefghijk"),
        (quality.too_many_symbols, "max_symbol_word_ratio", " ".join(["w"] * 9) + " #", " ".join(["w"] * 8) + " # #"),
        (quality.too_many_bullets, "max_bullet_line_fraction", "- a\n- b\n- c\nd", "- a\n- b\n- c\n- d"),
        (quality.too_few_punctuated_lines, "min_punctuation_line_fraction", "a.\nb\nc\nd", "a\nb\nc\nd"),
        (quality.too_many_duplicate_lines, "max_duplicate_line_fraction", "a\nb\nc\nd\na", "a\nb\na\na"),
        (quality.too_many_duplicate_paragraphs, "max_duplicate_paragraph_fraction", "a\n\nb\n\nc\n\na", "a\n\na\n\nb"),
    ],
)
def test_each_rule_at_its_threshold(rule, key, just_passes, just_fails):
    limits = {
        "min_words": 50,
        "max_words": 100,
        "min_mean_word_length": 3.0,
        "max_mean_word_length": 10.0,
        "max_symbol_word_ratio": 0.1,
        "max_bullet_line_fraction": 0.75,
        "min_punctuation_line_fraction": 0.25,
        "max_duplicate_line_fraction": 0.2,
        "max_duplicate_paragraph_fraction": 0.25,
    }
    assert getattr(QualityFilterConfig(), key) is not None  # a config key for every rule
    assert not rule(TextStats(just_passes), limits[key])
    assert rule(TextStats(just_fails), limits[key])


def test_first_failure_is_the_first_rule_in_order_and_null_disables_a_rule():
    short_and_bulleted = "- a b\n- c d"
    assert first_failure(short_and_bulleted, QualityFilterConfig()) == "too-few-words"
    cfg = QualityFilterConfig(min_words=None, min_mean_word_length=None)
    assert first_failure(short_and_bulleted, cfg) == "bullet-lines"
    off = {k: None for k in QualityFilterConfig.model_fields}
    assert first_failure(short_and_bulleted, QualityFilterConfig(**off)) is None


def test_minhash_estimates_jaccard_and_is_deterministic():
    words = [f"w{i}" for i in range(300)]
    a = " ".join(words)
    b = " ".join(words[:150] + ["x"] + words[151:])  # one word changed: 5 of 296 shingles each side
    sa, sb = set(minhash.shingles(a, 5).tolist()), set(minhash.shingles(b, 5).tolist())
    exact = len(sa & sb) / len(sa | sb)
    pa, pb = minhash.permutations(256, 1)
    sig_a = minhash.signature(minhash.shingles(a, 5), pa, pb)
    sig_b = minhash.signature(minhash.shingles(b, 5), pa, pb)
    assert abs(minhash.similarity(sig_a.tobytes(), sig_b.tobytes()) - exact) < 0.06
    again = minhash.signature(minhash.shingles(a, 5), *minhash.permutations(256, 1))
    assert (again == sig_a).all() and minhash.band_keys(sig_a, 32, 8) == minhash.band_keys(again, 32, 8)
    unrelated = minhash.signature(minhash.shingles(" ".join(f"v{i}" for i in range(300)), 5), pa, pb)
    assert minhash.similarity(sig_a.tobytes(), unrelated.tobytes()) < 0.05


def test_s_curve():
    b, r = 14, 8
    assert minhash.candidate_probability(0.9, b, r) > 0.99
    assert minhash.candidate_probability(0.5, b, r) < 0.06
    t = minhash.curve_threshold(b, r)
    assert 0.7 < t < 0.75 and abs(minhash.candidate_probability(t, b, r) - (1 - (1 - 1 / b) ** b)) < 1e-9
