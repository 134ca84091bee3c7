"""Closed-vocabulary tokenizers (char, bytes), explicit validation files, and the one-document split."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from mltrain.config import RunConfig
from mltrain.data.manifest import load_manifest
from mltrain.data.prepare import prepare_data
from mltrain.data.shards import open_shard
from mltrain.data.tokenizer import EOS_TOKEN, encode_checked, load_tokenizer
from mltrain.errors import DataError

TRAIN_TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
VAL_TEXT = "Second Citizen:\nWe are accounted poor citizens.\n"


def cfg_for(tmp_path: Path, vocab_size: int = 512, **data) -> RunConfig:
    d = {"sources": [str(tmp_path / "train.txt")], "dir": str(tmp_path / "data"), "shard_tokens": 64, **data}
    return RunConfig.model_validate({"name": "t", "model": {"preset": "tiny", "vocab_size": vocab_size}, "data": d})


def split_tokens(data_dir: Path, split: str) -> list[int]:
    m = load_manifest(data_dir)
    parts = [np.asarray(open_shard(data_dir / s.file)) for s in m.splits[split]]
    return np.concatenate(parts).tolist() if parts else []


@pytest.fixture
def texts(tmp_path: Path) -> Path:
    (tmp_path / "train.txt").write_text(TRAIN_TEXT)
    (tmp_path / "val.txt").write_text(VAL_TEXT)
    return tmp_path


def test_char_tokenizer_with_val_sources(texts: Path) -> None:
    m = prepare_data(cfg_for(texts, tokenizer="char", val_sources=[str(texts / "val.txt")]))
    data_dir = texts / "data"
    tok = load_tokenizer(data_dir)
    chars = sorted(set(TRAIN_TEXT + VAL_TEXT))  # the vocabulary covers the validation text too
    vocab = tok.get_vocab()
    assert [vocab[c] for c in chars] == list(range(len(chars)))
    assert m.eos_id == vocab[EOS_TOKEN] == len(chars) and m.vocab_size == len(chars) + 1
    assert m.tokenizer.source == "char" and m.val_sources == [str(texts / "val.txt")] and m.val_fraction == 0.0
    # train = exactly the sources, val = exactly val_sources, each document followed by EOS
    assert split_tokens(data_dir, "train") == [vocab[c] for c in TRAIN_TEXT] + [m.eos_id]
    assert split_tokens(data_dir, "val") == [vocab[c] for c in VAL_TEXT] + [m.eos_id]
    assert m.counts.train_docs == 1 and m.counts.val_docs == 1
    assert tok.decode(split_tokens(data_dir, "val")) == VAL_TEXT
    with pytest.raises(DataError, match=r"not in the run's character vocabulary: 'Q'"):
        encode_checked(tok, "Queen", "eval.txt")


def test_bytes_tokenizer_ids_are_utf8_bytes(texts: Path) -> None:
    text = "caf\u00e9 \u2603\n"
    (texts / "train.txt").write_text(text)
    m = prepare_data(cfg_for(texts, tokenizer="bytes", val_fraction=0.0))
    assert m.vocab_size == 257 and m.eos_id == 256 and m.tokenizer.source == "bytes"
    assert split_tokens(texts / "data", "train") == list(text.encode("utf-8")) + [256]
    assert load_tokenizer(texts / "data").decode(list(text.encode("utf-8"))) == text


def test_one_document_with_val_fraction_warns_and_names_the_fix(texts: Path) -> None:
    buf = io.StringIO()
    m = prepare_data(cfg_for(texts, tokenizer="bytes", val_fraction=0.1), console=Console(file=buf, width=400))
    assert m.counts.val_docs == 0
    out = buf.getvalue()
    assert "warning: data.sources" in out and "one document only" in out and "set data.val_sources" in out


@pytest.mark.parametrize("kind", ["char", "bytes"])
def test_closed_vocab_tokenizer_exports_and_autotokenizer_check_has_no_false_warning(
    kind: str, texts: Path, tmp_path, capsys
) -> None:
    """Item 6: the export's tokenizer check used probe text outside a char vocabulary and warned
    'Missing [UNK] token' although AutoTokenizer loads it and encodes exactly."""
    transformers = pytest.importorskip("transformers")
    from mltrain.config import ModelConfig
    from mltrain.model import Transformer
    from mltrain.model import hf as mhf

    m = prepare_data(cfg_for(texts, tokenizer=kind, val_sources=[str(texts / "val.txt")]))
    cfg = ModelConfig(
        vocab_size=m.vocab_size, hidden_size=32, n_layers=1, n_heads=2, n_kv_heads=1, ffn_hidden_size=64, max_seq_len=64
    )
    out = mhf.export_state_dict(
        Transformer(cfg).state_dict(), cfg, tmp_path / "hf", tokenizer_dir=texts / "data", eos_id=m.eos_id
    )
    err = " ".join(capsys.readouterr().err.split())  # rich wraps long lines
    assert "could not check" not in err and "tokenizes differently" not in err
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    ours = load_tokenizer(texts / "data")
    assert hf_tok(VAL_TEXT, add_special_tokens=False)["input_ids"] == ours.encode(VAL_TEXT).ids
    assert hf_tok.decode(ours.encode(VAL_TEXT).ids) == VAL_TEXT
    assert hf_tok.eos_token == EOS_TOKEN and hf_tok.eos_token_id == m.eos_id


def test_shakespeare_char_recipe_prepares_from_the_generated_stand_in(tmp_path: Path) -> None:
    import subprocess
    import sys

    import yaml

    from mltrain.model.flops import param_count

    root = Path(__file__).resolve().parents[2]
    subprocess.run(
        [sys.executable, str(root / "scripts/shakespeare_char_data.py"), "--out", str(tmp_path / "text")]
        + ["--chars", "20000"],
        check=True,
        capture_output=True,
    )
    raw = yaml.safe_load((root / "configs/shakespeare-char.yaml").read_text())
    raw["data"].update(
        sources=[str(tmp_path / "text/train.txt")],
        val_sources=[str(tmp_path / "text/val.txt")],
        dir=str(tmp_path / "d"),
    )
    cfg = RunConfig.model_validate(raw)
    m = prepare_data(cfg)
    assert m.tokenizer.source == "char" and m.vocab_size <= cfg.model.vocab_size
    # the first 90% of the characters train, the last 10% validate
    n_train, n_val = (len((tmp_path / f"text/{s}.txt").read_text()) for s in ("train", "val"))
    assert (m.counts.train_tokens, m.counts.val_tokens) == (n_train + 1, n_val + 1)  # + EOS
    assert n_train == int(0.9 * (n_train + n_val))
    assert 0.75e6 < param_count(cfg.model) < 0.85e6 and cfg.train.seq_len == 64 and cfg.train.micro_batch_size == 12
