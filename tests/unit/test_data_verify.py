"""Shards are checked in full (sha256, id range) the first time a run uses them, recorded in the run dir."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from tests.unit.test_data_loader import make_token_dir

from mltrain.data.manifest import load_manifest
from mltrain.data.shards import HEADER_SIZE, write_shard
from mltrain.data.verify import RECORD_FILE, verify_shards_once
from mltrain.errors import DataError


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    return make_token_dir(tmp_path / "d", train=[130, 95], val=[70])


def record(run_dir: Path) -> dict:
    return json.loads((run_dir / RECORD_FILE).read_text())["shards"]


def later(path: Path) -> None:
    """File times tick at the kernel's coarse clock: make the change visibly later, as a real one is."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))


def test_first_start_verifies_every_shard_later_starts_none(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = load_manifest(data_dir)
    assert verify_shards_once(data_dir, m, run, 1 << 20) == ["train_00000.bin", "train_00001.bin", "val_00000.bin"]
    first = record(run)
    assert {f: e["sha256"] for f, e in first.items()} == {s.file: s.sha256 for s in m.shards}
    assert verify_shards_once(data_dir, m, run, 1 << 20) == []
    assert record(run) == first  # nothing re-hashed: every verified_at is unchanged


def test_a_changed_shard_is_verified_again(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = load_manifest(data_dir)
    verify_shards_once(data_dir, m, run, 1 << 20)
    before = record(run)
    write_shard(data_dir / "val_00000.bin", np.arange(225, 295), np.dtype(np.uint32))  # same tokens, new file
    later(data_dir / "val_00000.bin")
    again = verify_shards_once(data_dir, m, run, 1 << 20)
    assert again == ["val_00000.bin"]
    after = record(run)
    assert after["train_00000.bin"] == before["train_00000.bin"]
    assert after["val_00000.bin"]["verified_at"] > before["val_00000.bin"]["verified_at"]


def test_bit_flip_is_one_line_naming_the_shard_even_after_a_verified_start(data_dir: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    m = load_manifest(data_dir)
    verify_shards_once(data_dir, m, run, 1 << 20)
    p = data_dir / "train_00001.bin"
    raw = bytearray(p.read_bytes())
    raw[HEADER_SIZE + 40] ^= 0x04
    p.write_bytes(bytes(raw))
    later(p)
    for _ in range(2):  # refused again on the next start: a failed check is not recorded as verified
        with pytest.raises(DataError) as e:
            verify_shards_once(data_dir, m, run, 1 << 20)
        msg = str(e.value)
        assert msg.startswith(f"{p}: sha256 mismatch") and "\n" not in msg


def test_out_of_vocabulary_ids_name_shard_and_offset(data_dir: Path, tmp_path: Path) -> None:
    m = load_manifest(data_dir)  # ids 0..224 across the train shards: with 200 the first bad is 200
    with pytest.raises(DataError) as e:
        verify_shards_once(data_dir, m, tmp_path / "run", 200)
    msg = str(e.value)
    assert msg.startswith(f"{data_dir / 'train_00001.bin'}: token id 200 at token offset 70 is >= vocab_size 200")
    assert not (tmp_path / "run").exists()  # a refused first start leaves no run dir behind
