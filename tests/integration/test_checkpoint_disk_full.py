"""Out of disk while checkpointing, on a real full file system (a small tmpfs): the failed save
leaves the previous checkpoint intact, training finishes, and a restart resumes from it."""

from __future__ import annotations

import os
import subprocess

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.train.checkpoint import find_checkpoints

pytestmark = pytest.mark.slow


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()}); the unit test covers this with a mock")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_disk_full_keeps_previous_checkpoint_and_resume_uses_it(tmp_path, small_fs, tiny_data_dir):
    cfg = tiny_run_config(small_fs, tiny_data_dir, "full-disk", max_steps=12)
    cfg["checkpoint"] = {"every_steps": 2, "keep_last": 3}
    path = write_config(tmp_path / "run.yaml", cfg)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(mltrain_cmd("train", str(path)), env=env, capture_output=True, text=True, timeout=180)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "disk full" in out and "previous checkpoint is kept" in out, out[-3000:]
    run_dir = small_fs / "runs" / "full-disk"
    good = find_checkpoints(run_dir)
    assert good, "at least the checkpoints that fitted must be committed"
    assert not list((run_dir / "checkpoints").glob("*.tmp")), "failed saves must not leave temp dirs"
    newest = good[-1][0]
    # Free the space a restart needs, then resume: it must pick the newest committed checkpoint.
    for _, p in good[:-1]:
        subprocess.run(["rm", "-rf", str(p)], check=True)
    r2 = subprocess.run(
        mltrain_cmd("train", str(path), "--set", "train.max_steps=14"),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert f"(step {newest})" in r2.stdout, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert (run_dir / "control" / "exit_reason").read_text().strip() == "done"
