"""validate: clean data passes; truncated / bit-flipped / missing shards, bad ids, a replaced
tokenizer and a broken manifest are each reported by name."""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from mltrain.config import RunConfig
from mltrain.data.manifest import MANIFEST_FILE, load_manifest, save_manifest
from mltrain.data.prepare import prepare_data
from mltrain.data.shards import HEADER_SIZE, file_sha256, write_shard
from mltrain.data.validate import check_manifest_consistency, validate_data_dir
from mltrain.errors import DataError


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    rng = random.Random(0)
    src = tmp_path / "src"
    src.mkdir()
    words = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]
    for i in range(30):
        (src / f"{i:03d}.txt").write_text(" ".join(rng.choice(words) for _ in range(rng.randint(30, 90))))
    cfg = RunConfig.model_validate(
        {
            "name": "v",
            "model": {"preset": "tiny", "vocab_size": 400},
            "data": {"sources": [str(src)], "dir": str(tmp_path / "data"), "shard_tokens": 500, "val_fraction": 0.2},
        }
    )
    prepare_data(cfg)
    return tmp_path / "data"


def run_validate(data_dir: Path, **kw) -> tuple[bool, str]:
    buf = io.StringIO()
    ok = validate_data_dir(data_dir, console=Console(file=buf, width=250, color_system=None), **kw)
    return ok, buf.getvalue()


def row(out: str, name: str) -> str:
    return next(line for line in out.splitlines() if name in line)


def test_clean_data_passes(data_dir: Path) -> None:
    ok, out = run_validate(data_dir, model_vocab_size=400)
    assert ok, out
    m = load_manifest(data_dir)
    assert len(m.splits["train"]) >= 2 and m.splits["val"]
    assert "OK:" in out and all(s.file in out for s in m.shards)
    check_manifest_consistency(data_dir)


def test_truncated_shard_reported_by_name(data_dir: Path) -> None:
    p = data_dir / "train_00001.bin"
    p.write_bytes(p.read_bytes()[:-10])
    ok, out = run_validate(data_dir)
    assert not ok
    assert "BAD" in row(out, "train_00001.bin") and "truncated" in row(out, "train_00001.bin")
    assert "ok" in row(out, "train_00000.bin")
    assert "FAILED" in out and "(train_00001.bin)" in out
    with pytest.raises(DataError, match=r"train_00001\.bin: truncated"):
        check_manifest_consistency(data_dir)


def test_bit_flipped_shard_reported_by_name(data_dir: Path) -> None:
    p = data_dir / "val_00000.bin"
    raw = bytearray(p.read_bytes())
    raw[HEADER_SIZE + 7] ^= 0x01  # one bit in the token data: sizes and header still fine
    p.write_bytes(bytes(raw))
    ok, out = run_validate(data_dir)
    assert not ok and "sha256 mismatch" in row(out, "val_00000.bin")
    check_manifest_consistency(data_dir)  # the fast check cannot see content changes, by design


def test_missing_shard_reported_by_name(data_dir: Path) -> None:
    (data_dir / "train_00000.bin").unlink()
    ok, out = run_validate(data_dir)
    assert not ok and "missing" in row(out, "train_00000.bin")
    with pytest.raises(DataError, match=r"train_00000\.bin: shard file is missing"):
        check_manifest_consistency(data_dir)


def test_corrupt_header_reported(data_dir: Path) -> None:
    p = data_dir / "train_00000.bin"
    raw = bytearray(p.read_bytes())
    raw[0:8] = b"GARBAGE!"
    p.write_bytes(bytes(raw))
    ok, out = run_validate(data_dir)
    assert not ok and "bad magic" in row(out, "train_00000.bin")
    with pytest.raises(DataError, match=r"train_00000\.bin: not an mltrain token shard"):
        check_manifest_consistency(data_dir)


def test_token_id_out_of_range_detected(data_dir: Path) -> None:
    m = load_manifest(data_dir)
    # a shard whose checksum matches the manifest but that holds an id >= vocab_size
    tokens = np.full(50, 3, dtype=np.uint16)
    tokens[17] = m.vocab_size + 5
    sha = write_shard(data_dir / "train_00000.bin", tokens, np.dtype(np.uint16))
    shard = m.splits["train"][0]
    shard.tokens, shard.sha256 = 50, sha
    save_manifest(data_dir, m)
    ok, out = run_validate(data_dir)
    assert not ok and f"token id {m.vocab_size + 5} >= tokenizer vocab {m.vocab_size}" in row(out, "train_00000.bin")


def test_model_vocab_smaller_than_data_detected(data_dir: Path) -> None:
    m = load_manifest(data_dir)
    ok, out = run_validate(data_dir, model_vocab_size=100)
    assert not ok
    assert f"tokenizer vocab {m.vocab_size} is larger than model vocab_size 100" in out
    assert ">= model vocab_size 100" in out


def test_replaced_tokenizer_detected(data_dir: Path) -> None:
    p = data_dir / "tokenizer.json"
    p.write_text(p.read_text().replace("alpha", "alphx", 1))
    ok, out = run_validate(data_dir)
    assert not ok and "tokenizer replaced after prepare" in out


def test_missing_and_corrupt_manifest(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        validate_data_dir(tmp_path / "nowhere")
    mf = data_dir / MANIFEST_FILE
    good = mf.read_text()
    mf.write_text(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"manifest\.json: corrupt manifest \(invalid JSON"):
        validate_data_dir(data_dir)
    d = json.loads(good)
    del d["shards"][0]["sha256"]
    mf.write_text(json.dumps(d))
    with pytest.raises(DataError, match=r"corrupt manifest: shards\.0\.sha256"):
        check_manifest_consistency(data_dir)
    mf.unlink()
    with pytest.raises(DataError, match="no manifest"):
        check_manifest_consistency(data_dir)


def test_stray_shard_is_a_note_not_a_failure(data_dir: Path) -> None:
    (data_dir / "train_09999.bin").write_bytes(b"junk")
    ok, out = run_validate(data_dir)
    assert ok and "train_09999.bin is not in the manifest" in out
    assert file_sha256(data_dir / "train_09999.bin")  # untouched
