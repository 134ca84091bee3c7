"""prepare: tokenizer training/caching/determinism, packing, split, manifest, dtype choice, errors."""

from __future__ import annotations

import json
import random
import socket
from pathlib import Path

import numpy as np
import pytest

from mltrain.config import RunConfig
from mltrain.data import prepare as prepare_mod
from mltrain.data.manifest import load_manifest
from mltrain.data.prepare import choose_val_docs, prepare_data
from mltrain.data.shards import HEADER_SIZE, dtype_for_vocab, open_shard, read_header
from mltrain.data.tokenizer import load_tokenizer
from mltrain.errors import DataError

WORDS = [
    "the",
    "of",
    "and",
    "to",
    "in",
    "is",
    "that",
    "for",
    "it",
    "with",
    "as",
    "was",
    "on",
    "be",
    "by",
    "this",
    "are",
    "or",
    "from",
    "at",
    "an",
    "which",
    "data",
    "model",
    "train",
]


def write_corpus(root: Path, n_docs: int = 40, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    docs = []
    for i in range(n_docs):
        text = " ".join(rng.choice(WORDS) + rng.choice(["", "s", "ed", "ing"]) for _ in range(rng.randint(20, 120)))
        docs.append(f"doc {i}: {text}.")
    with open(root / "corpus.jsonl", "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return docs


def make_cfg(tmp_path: Path, *, data: dict | None = None, vocab_size: int = 512) -> RunConfig:
    d = {
        "sources": [str(tmp_path / "src")],
        "dir": str(tmp_path / "data"),
        "shard_tokens": 1000,
        "val_fraction": 0.1,
        **(data or {}),
    }
    return RunConfig.model_validate({"name": "t", "model": {"preset": "tiny", "vocab_size": vocab_size}, "data": d})


def read_split(data_dir: Path, split: str) -> np.ndarray:
    m = load_manifest(data_dir)
    parts = [np.asarray(open_shard(data_dir / s.file)) for s in m.splits[split]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def test_prepare_writes_shards_and_manifest(tmp_path: Path) -> None:
    docs = write_corpus(tmp_path / "src")
    m = prepare_data(make_cfg(tmp_path))
    data_dir = tmp_path / "data"
    assert load_manifest(data_dir) == m
    assert m.format_version == 1 and m.dtype == "uint16" and m.vocab_size <= 512
    assert m.sources == [str(tmp_path / "src")]
    assert m.counts.docs == 40 and m.counts.train_docs + m.counts.val_docs == 40
    val_bytes = sum(len(d.encode()) for d in docs if d in set(_decoded_split(data_dir, "val", m)))
    assert 0.1 * m.counts.bytes <= val_bytes < 0.1 * m.counts.bytes + max(len(d.encode()) for d in docs)
    assert m.counts.bytes == sum(len(d.encode()) for d in docs)
    assert m.tokenizer.eos_token == "<|endoftext|>" and m.eos_id == m.tokenizer.eos_id
    assert len(m.tokenizer.sha256) == 64 and m.created.endswith("+00:00")
    for split in ("train", "val"):
        shards = m.splits[split]
        assert shards, split
        assert all(s.tokens == 1000 for s in shards[:-1]) and 0 < shards[-1].tokens <= 1000
        assert sum(s.docs for s in shards) == getattr(m.counts, f"{split}_docs")
        for s in shards:
            assert (data_dir / s.file).stat().st_size == HEADER_SIZE + 2 * s.tokens
            assert read_header(data_dir / s.file).tokens == s.tokens
    assert m.counts.train_tokens == sum(s.tokens for s in m.splits["train"])
    # EOS after every document; decoding the packed stream gives back the documents exactly
    tok = load_tokenizer(data_dir)
    seen = []
    for split in ("train", "val"):
        ids = read_split(data_dir, split)
        assert ids[-1] == m.eos_id and int((ids == m.eos_id).sum()) == getattr(m.counts, f"{split}_docs")
        pieces = np.split(ids, np.flatnonzero(ids == m.eos_id) + 1)[:-1]
        seen += [tok.decode(p[:-1].tolist()) for p in pieces]
    assert sorted(seen) == sorted(docs)
    assert not list(data_dir.glob("*.tmp"))


def _decoded_split(data_dir: Path, split: str, m) -> list[str]:
    ids = read_split(data_dir, split)
    pieces = np.split(ids, np.flatnonzero(ids == m.eos_id) + 1)[:-1]
    return [load_tokenizer(data_dir).decode(p[:-1].tolist()) for p in pieces]


def test_tokenizer_deterministic_cached_and_retrained_on_change(tmp_path: Path) -> None:
    write_corpus(tmp_path / "src")
    m1 = prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "d1")}))
    m2 = prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "d2")}))
    assert m1.tokenizer.sha256 == m2.tokenizer.sha256  # same corpus -> byte-identical tokenizer
    assert [s.sha256 for s in m1.shards] == [s.sha256 for s in m2.shards]
    assert (tmp_path / "d1/tokenizer.json").read_bytes() == (tmp_path / "d2/tokenizer.json").read_bytes()

    tok_path = tmp_path / "d1/tokenizer.json"
    mtime = tok_path.stat().st_mtime_ns
    calls = []
    orig = prepare_mod.resolve_tokenizer

    def spy(*a, **k):
        choice = orig(*a, **k)
        calls.append(choice.cached)
        return choice

    prepare_mod.resolve_tokenizer = spy
    try:
        m3 = prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "d1")}))
        assert calls == [True] and tok_path.stat().st_mtime_ns == mtime and m3.tokenizer.sha256 == m1.tokenizer.sha256
        prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "d1"), "bpe_vocab_size": 400}))
        assert calls[-1] is False  # vocab size changed -> retrained
        write_corpus(tmp_path / "src", seed=1)
        m5 = prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "d1"), "bpe_vocab_size": 400}))
        assert calls[-1] is False and m5.corpus_fingerprint != m1.corpus_fingerprint  # corpus changed -> retrained
    finally:
        prepare_mod.resolve_tokenizer = orig


def test_output_independent_of_worker_count(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_corpus(tmp_path / "src", n_docs=60)
    monkeypatch.setattr(prepare_mod, "_MIN_PARALLEL_BYTES", 0)
    monkeypatch.setattr(prepare_mod, "_CHUNK_DOCS", 7)  # many small chunks, so order matters
    one = prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "w1"), "num_workers": 1}))
    two = prepare_data(make_cfg(tmp_path, data={"dir": str(tmp_path / "w2"), "num_workers": 2}))
    assert [(s.file, s.sha256, s.tokens, s.docs) for s in one.shards] == [
        (s.file, s.sha256, s.tokens, s.docs) for s in two.shards
    ]


def test_split_rules(tmp_path: Path) -> None:
    ones = np.ones
    assert choose_val_docs(ones(1), 0.5).sum() == 0
    assert choose_val_docs(ones(2), 0.01).sum() == 1  # at least one val doc
    assert choose_val_docs(ones(10), 0.99).sum() == 9  # never all of them
    assert choose_val_docs(ones(100), 0.0).sum() == 0
    assert choose_val_docs(ones(100), 0.2).sum() == 20
    sizes = np.random.default_rng(0).integers(1, 10_000, size=500)
    mask = choose_val_docs(sizes, 0.1)
    assert (mask == choose_val_docs(sizes, 0.1)).all()  # fixed seed
    # by bytes: the val docs hold 10% of the bytes, overshooting by at most one document
    assert 0.1 * sizes.sum() <= sizes[mask].sum() < 0.1 * sizes.sum() + sizes.max()
    write_corpus(tmp_path / "src", n_docs=5)
    m = prepare_data(make_cfg(tmp_path, data={"val_fraction": 0.0}))
    assert m.splits["val"] == [] and m.counts.val_docs == 0


def test_reprepare_removes_stale_shards(tmp_path: Path) -> None:
    write_corpus(tmp_path / "src")
    m1 = prepare_data(make_cfg(tmp_path, data={"shard_tokens": 300}))
    m2 = prepare_data(make_cfg(tmp_path, data={"shard_tokens": 5000}))
    assert len(m1.shards) > len(m2.shards)
    assert sorted(p.name for p in (tmp_path / "data").glob("*.bin")) == sorted(s.file for s in m2.shards)


def test_dtype_choice() -> None:
    assert dtype_for_vocab(4096) == np.uint16 and dtype_for_vocab(65535) == np.uint16
    assert dtype_for_vocab(65536) == np.uint32 and dtype_for_vocab(151936) == np.uint32


def _big_wordlevel_tokenizer(path: Path, n: int) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<|endoftext|>": 0, "[UNK]": 1, **{f"w{i}": i + 2 for i in range(n - 2)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))


def test_uint32_shards_for_large_vocab_user_tokenizer(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("w70000 w1 w65534 w65535 w69999")
    (tmp_path / "src" / "b.txt").write_text("w5 nope w70001")
    _big_wordlevel_tokenizer(tmp_path / "big.json", 70_003)
    m = prepare_data(
        make_cfg(tmp_path, data={"tokenizer": str(tmp_path / "big.json"), "val_fraction": 0.0}, vocab_size=80_000)
    )
    assert m.dtype == "uint32" and m.vocab_size == 70_003 and m.tokenizer.source == str(tmp_path / "big.json")
    ids = read_split(tmp_path / "data", "train")
    assert ids.dtype == np.uint32
    # w<i> has id i+2; "nope" and w70001 (not in the vocab) are [UNK]=1; EOS=0 after each document
    assert ids.tolist() == [70002, 3, 65536, 65537, 70001, 0, 7, 1, 1, 0]
    # the copied tokenizer is what load_tokenizer returns
    assert load_tokenizer(tmp_path / "data").get_vocab_size() == 70_003


def test_vocab_larger_than_model_is_an_error_naming_both(tmp_path: Path) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.txt").write_text("w1 w2")
    _big_wordlevel_tokenizer(tmp_path / "big.json", 70_003)
    with pytest.raises(DataError, match=r"vocab size 70003 is larger than model\.vocab_size 4096"):
        prepare_data(make_cfg(tmp_path, data={"tokenizer": str(tmp_path / "big.json")}, vocab_size=4096))
    with pytest.raises(DataError, match=r"bpe_vocab_size 1000 is larger than model\.vocab_size 512"):
        prepare_data(make_cfg(tmp_path, data={"bpe_vocab_size": 1000}, vocab_size=512))


def test_tokenizer_errors(tmp_path: Path) -> None:
    write_corpus(tmp_path / "src", n_docs=3)
    with pytest.raises(DataError, match=r"missing\.json: no such file"):
        prepare_data(make_cfg(tmp_path, data={"tokenizer": str(tmp_path / "missing.json")}))
    (tmp_path / "bad.json").write_text("{not a tokenizer")
    with pytest.raises(DataError, match=r"bad\.json: not a valid tokenizer\.json"):
        prepare_data(make_cfg(tmp_path, data={"tokenizer": str(tmp_path / "bad.json")}))
    with pytest.raises(DataError, match="no tokenizer"):
        load_tokenizer(tmp_path / "nowhere")


def test_hub_tokenizer_offline_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A hub tokenizer with HF_HUB_OFFLINE=1 is one clear error, and nothing touches the network."""

    def refuse(address, *a, **kw):
        raise AssertionError(f"network probe to {address}")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    write_corpus(tmp_path / "src", n_docs=3)
    with pytest.raises(
        DataError,
        match=r"data\.tokenizer: 'no-such-org/no-such-tokenizer': not a local file, and the Hugging Face hub is "
        r"unreachable: HF_HUB_OFFLINE is set",
    ):
        prepare_data(make_cfg(tmp_path, data={"tokenizer": "no-such-org/no-such-tokenizer"}))


def test_prepare_builtin_corpus_small_cap(tmp_path: Path) -> None:
    cfg = make_cfg(
        tmp_path,
        data={
            "sources": ["builtin:python-stdlib"],
            "max_source_bytes": 100_000,
            "shard_tokens": 10_000,
            "val_fraction": 0.05,
        },
    )
    m = prepare_data(cfg)
    assert m.counts.bytes >= 100_000 and m.counts.val_docs >= 1 and m.counts.skipped_docs == m.counts.skipped_files
    assert m.counts.train_tokens > 10_000 and len(m.splits["train"]) >= 2


def test_rejected_tokenizer_leaves_prepared_dir_intact(tmp_path: Path) -> None:
    from mltrain.data.validate import validate_data_dir

    write_corpus(tmp_path / "src", n_docs=10)
    prepare_data(make_cfg(tmp_path))
    _big_wordlevel_tokenizer(tmp_path / "big.json", 70_003)
    with pytest.raises(DataError, match="larger than model.vocab_size"):
        prepare_data(make_cfg(tmp_path, data={"tokenizer": str(tmp_path / "big.json")}))
    assert validate_data_dir(tmp_path / "data")


def test_sources_changing_between_passes_is_detected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """prepare streams the corpus twice (scan, then encode) instead of holding it in memory."""
    write_corpus(tmp_path / "src", n_docs=6)
    real = prepare_mod.iter_documents

    def edited(dc, stats=None):
        for i, doc in enumerate(real(dc, stats)):
            yield doc + " edited" if i == 3 else doc

    monkeypatch.setattr(prepare_mod, "iter_documents", edited)
    with pytest.raises(DataError, match="sources changed while prepare was reading them"):
        prepare_data(make_cfg(tmp_path))
    assert not (tmp_path / "data" / "manifest.json").exists()
