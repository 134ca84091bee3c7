"""A run's deadline on a REAL Slurm 22.05 (local nodes): `mltrain submit --deadline +1m` makes the trainer
checkpoint and stop before the deadline; the job is not requeued and `mltrain status` says why it stopped.
Independent of test_slurm*.py (own data dir, own run names), so the files can run in parallel.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from slurm_fixture import (
    Env,
    job_field,
    make_env,
    records,
    starts,
    wait_job,
)

from mltrain.checkpoint_rule import MARKER
from mltrain.train.deadline import parse_deadline

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return make_env(tmp_path_factory, "slurm-deadline")


def test_a_deadline_a_minute_away_checkpoints_and_stops_before_it(env: Env) -> None:
    job, run = env.submit(
        "deadline",
        "train.max_steps=100000",
        "checkpoint.every_steps=20",
        env={"MLTRAIN_FAULT_STEP_S": "0.2"},
        args=("--deadline", "+1m"),
    )
    # capped: the deadline plus the USR1 grace (60 s) plus the minute Slurm may send USR1 early
    assert job_field(job, "TimeLimit") == "00:03:00"
    assert wait_job(job, 180) == "COMPLETED"
    out = (run / "slurm" / f"{job}.out").read_text()
    (start,) = starts(run)
    at = parse_deadline(start["deadline"]["at"])
    assert start["deadline"]["source"] == "--deadline" and start["deadline"]["time"] == at
    exit_rec = records(run / "metrics.jsonl")[-1]
    assert exit_rec["kind"] == "exit" and exit_rec["reason"] == "deadline" and exit_rec["time"] < at, out
    step = exit_rec["step"]
    ckpt = run / "checkpoints" / f"step_{step:08d}"
    assert json.loads((ckpt / MARKER).read_text())["time"] < at  # committed before the deadline
    assert (run / "control" / "exit_reason").read_text().strip() == "deadline"
    # not requeued: one attempt, its decision recorded as a deadline stop
    assert job_field(job, "Restarts") == "0"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"], rec["step"]) == ("deadline", "none", False, step)
    assert "stopped before its deadline (--deadline), checkpointed: not requeueing" in out
    status = env.mltrain("status", str(run))
    assert "stopped before its deadline (checkpointed)" in status and start["deadline"]["at"] in status
    assert time.time() - at < 60  # the job ended near the deadline, not at the capped time limit
