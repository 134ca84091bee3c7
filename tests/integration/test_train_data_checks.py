"""`mltrain train` refuses damaged data before it trains, with one line naming the shard."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.data.shards import HEADER_SIZE
from mltrain.data.verify import RECORD_FILE
from mltrain.fsutil import file_sha256

pytestmark = pytest.mark.slow


def train(cfg_path, *sets: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    args = [a for s in sets for a in ("--set", s)]
    return subprocess.run(
        mltrain_cmd("train", str(cfg_path), *args), env=env, capture_output=True, text=True, timeout=180
    )


def one_line(r: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert r.returncode != 0 and len(lines) == 1 and "Traceback" not in r.stderr, r.stdout[-2000:] + r.stderr[-3000:]
    return lines[0]


@pytest.fixture
def data(tmp_path, tiny_data_dir):
    d = tmp_path / "data"
    shutil.copytree(tiny_data_dir, d)
    return d


def test_bit_flip_in_a_shard_is_refused_after_a_clean_start(tmp_path, data):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, data, "flip", max_steps=1))
    r = train(cfg)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert "verified" in r.stdout
    run_dir = tmp_path / "runs" / "flip"
    rec = json.loads((run_dir / RECORD_FILE).read_text())["shards"]
    assert len(rec) == len(json.loads((data / "manifest.json").read_text())["shards"])
    r = train(cfg, "train.max_steps=2")  # second start: nothing re-hashed (the record is unchanged)
    assert r.returncode == 0 and "verified" not in r.stdout, r.stdout[-2000:] + r.stderr[-2000:]
    assert json.loads((run_dir / RECORD_FILE).read_text())["shards"] == rec
    shard = data / "train_00001.bin"
    raw = bytearray(shard.read_bytes())
    raw[HEADER_SIZE + 1000] ^= 0x20
    shard.write_bytes(bytes(raw))
    st = shard.stat()
    os.utime(shard, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a change happens later than the last check
    line = one_line(train(cfg, "train.max_steps=3"))
    assert str(shard) in line and "sha256 mismatch" in line


def test_out_of_vocabulary_ids_are_refused_naming_shard_and_offset(tmp_path, data):
    """A shard whose ids exceed the vocabulary (a mismatched tokenizer) but whose manifest checksum is
    consistent: one line with the file and the token offset, not an IndexError from the embedding."""
    shard = data / "train_00000.bin"
    raw = bytearray(shard.read_bytes())
    dtype = np.dtype(json.loads((data / "manifest.json").read_text())["dtype"])
    off = 1234
    raw[HEADER_SIZE + off * dtype.itemsize : HEADER_SIZE + (off + 1) * dtype.itemsize] = np.array(
        [5000], dtype=dtype
    ).tobytes()
    shard.write_bytes(bytes(raw))
    man = json.loads((data / "manifest.json").read_text())
    for s in man["shards"]:
        if s["file"] == shard.name:
            s["sha256"] = file_sha256(shard)
    (data / "manifest.json").write_text(json.dumps(man))
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, data, "oov", max_steps=1))
    line = one_line(train(cfg))
    assert str(shard) in line and f"token id 5000 at token offset {off} is >= vocab_size" in line
