"""`mltrain train --deadline`: a real run (torchrun, 2 gloo workers) checkpoints and stops before its deadline,
exits 75 with exit reason `deadline`, and the next `mltrain train` resumes from that checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.checkpoint_rule import MARKER
from mltrain.train.deadline import parse_deadline

pytestmark = pytest.mark.slow


def _records(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]


def test_train_with_a_deadline_stops_before_it_and_resumes(tmp_path: Path, tiny_data_dir: Path) -> None:
    cfg = tiny_run_config(tmp_path, tiny_data_dir, "dl", max_steps=100000, parallel="ddp", device="cpu", log_every=10)
    cfg["checkpoint"] = {"every_steps": 20, "keep_last": 2}
    path = write_config(tmp_path / "run.yaml", cfg)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "MLTRAIN_FAULT", "MLTRAIN_DEADLINE"))}
    t0 = time.time()
    p = subprocess.run(
        mltrain_cmd("train", str(path), "--nproc", "2", "--deadline", "+30s"),
        env={**env, "MLTRAIN_FAULT_STEP_S": "0.2"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    out = p.stdout + p.stderr
    assert p.returncode == 75, out
    run = tmp_path / "runs" / "dl"
    (start,) = [r for r in _records(run) if r.get("kind") == "start"]
    at = parse_deadline(start["deadline"]["at"])
    assert start["deadline"]["source"] == "--deadline" and int(t0) + 30 <= at <= t0 + 31
    assert time.time() < at + 5  # the launcher is back right after the stop, not at some later point
    last = _records(run)[-1]
    assert last["kind"] == "exit" and last["reason"] == "deadline" and last["time"] < at, out
    step = last["step"]
    assert json.loads((run / "checkpoints" / f"step_{step:08d}" / MARKER).read_text())["time"] < at
    assert (run / "control" / "exit_reason").read_text().strip() == "deadline"
    assert f"stopped before its deadline (--deadline, {start['deadline']['at']}): checkpointed step {step}" in out

    p = subprocess.run(
        mltrain_cmd("train", str(path), "--nproc", "2", "--set", f"train.max_steps={step + 3}"),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    starts = [r for r in _records(run) if r.get("kind") == "start"]
    assert starts[-1]["step"] == step and "deadline" not in starts[-1]
    assert _records(run)[-1]["reason"] == "done"
