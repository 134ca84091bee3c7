"""Limits on a REAL Slurm 22.05 (3 local nodes): the time limit arriving while the stop checkpoint is still
being written (slower than the grace and than Slurm's KillWait), and continuing on fewer nodes
(launch.min_nodes) when a node is lost and no spare exists. Independent of test_slurm*.py (own data dir,
own run names), so the files can run in parallel.
"""

from __future__ import annotations

import subprocess
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
    wait_step,
)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
]
PACE = {"MLTRAIN_FAULT_STEP_S": "0.15"}  # steps of >= 0.15 s: "at step N" does not race a fast machine


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return make_env(tmp_path_factory, "slurm-limits")


def _out(run: Path, job: str) -> str:
    return (run / "slurm" / f"{job}.out").read_text()


def test_time_limit_during_slow_stop_checkpoint_requeues(env: Env) -> None:
    """Time limit 1 min; the USR1 warning (sent by the test at step 10, so it never races the machine) asks
    the trainer to stop, which then takes 120 s (longer than the grace and than KillWait=5 s): Slurm kills
    it at the limit (TIMEOUT, which Slurm never requeues). mltrain records time_limit, requeues the job
    itself, releases the hold, and the run resumes from the last committed checkpoint and finishes."""
    job, run = env.submit(
        "timelimit",
        "train.max_steps=40",
        "checkpoint.every_steps=5",
        "launch.requeue_grace_s=5",
        env={"MLTRAIN_FAULT_SLOW_STOP_S": "120", "MLTRAIN_FAULT_STEP_S": "0.1"},
        args=("--time", "00:01:00"),
    )
    wait_step(run, 10)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    deadline = time.monotonic() + 200  # TIMEOUT for a few seconds, until the script's helper requeues it
    while job_field(job, "Restarts") != "1":
        assert time.monotonic() < deadline, _out(run, job)
        time.sleep(0.3)
    assert wait_job(job, 300) == "COMPLETED"
    rec = records(run / "restarts.jsonl")[0]  # (a slow machine may also see a normal USR1 requeue after it)
    assert (rec["cause"], rec["action"], rec["counted"]) == ("time_limit", "requeue", True)
    out = _out(run, job)
    assert "USR1: asking the trainer to checkpoint and stop" in out and "requeued after TIMEOUT" in out
    assert "released the requeue hold" in out
    assert starts(run)[1]["step"] == rec["step"] and rec["step"] >= 10
    assert not list((run / "checkpoints").glob("*.tmp"))  # the killed stop checkpoint left nothing half-written


def test_no_spare_continues_on_min_nodes(env: Env) -> None:
    """A 3-node job (no spare in the 3-node partition) with launch.min_nodes=2: the rank on node2 is killed,
    node2 is excluded anyway and the job is requeued on the 2 usable nodes (the real ExcNodeList and
    NumNodes/NumTasks). The kill comes before the first checkpoint, so the run restarts from step 0 on
    world size 2; resuming a checkpoint on another world size is the trainer's part (tests/integration/test_train_torchrun.py)."""
    spec = env.root / "local3.yaml"
    spec.write_text(env.cluster.read_text().replace("nodes: 2", "nodes: 3"))
    out = env.mltrain(
        *env.submit_args("shrink", "launch.min_nodes=2", "launch.max_in_place_restarts=0", "train.max_steps=30"),
        "--cluster",
        str(spec),
        env={"MLTRAIN_FAULT": "kill:5:@node2", **PACE},
    )
    job = out.split("submitted job ", 1)[1].split(":", 1)[0]
    run = env.root / "runs" / "shrink"
    deadline = time.monotonic() + 150
    while len([a for a in records(run / "slurm" / "allocations.jsonl") if a["event"] == "start"]) < 2:
        assert time.monotonic() < deadline, _out(run, job)
        time.sleep(0.3)
    assert job_field(job, "ExcNodeList") == "node2" and job_field(job, "NumNodes") == "2"
    assert wait_job(job, 240) == "COMPLETED"
    first = records(run / "restarts.jsonl")[0]
    assert (first["cause"], first["node"], first["action"]) == ("rank_failure", "node2", "requeue")
    allocs = [a for a in records(run / "slurm" / "allocations.jsonl") if a["event"] == "start"]
    assert allocs[0]["nodes"] == ["node1", "node2", "node3"] and allocs[1]["nodes"] == ["node1", "node3"]
    assert "continuing on 2 nodes (launch.min_nodes=2)" in (run / "slurm" / f"{job}.err").read_text()
    assert [s["world_size"] for s in starts(run)] == [3, 2]
    assert "updated: ExcNodeList=node2 NumNodes=2-2 NumTasks=2" in _out(
        run, job
    ) and "released the requeue hold" in _out(run, job)
