"""Recovery on a REAL Slurm 22.05 (3 local nodes, jobs of 2, so a spare exists): every restart is recorded
with its true cause, node and count (restarts.jsonl) and the allocation in slurm/allocations.jsonl; Slurm's
BeginTime hold is released by the job itself; a rank failure restarts torchrun in place; a failing node is
excluded (the real ExcNodeList) and the job gives up after launch.max_restarts; the time limit arriving while
the stop checkpoint is still running (longer than KillWait) is recovered.

Each test is an independent run with its own name; the module's data dir is its own, so this file can
run in parallel with test_slurm.py. MLTRAIN_SLURM_BENCH_JSON=<path> writes the recovery-time figures there.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from slurm_fixture import (
    TRAINER_READY,
    Env,
    first_step_after,
    job_field,
    make_env,
    records,
    starts,
    wait_job,
    wait_state,
    wait_step,
)

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
    pytest.mark.skipif(not TRAINER_READY, reason="waits for the trainer (mltrain.train.trainer)"),
]
PACE = {"MLTRAIN_FAULT_STEP_S": "0.15"}  # steps of >= 0.15 s: "at step N" does not race a fast machine
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory):
    e = make_env(tmp_path_factory, "slurm-recovery")
    yield e
    out = os.environ.get("MLTRAIN_SLURM_BENCH_JSON")
    if out and FIGURES:
        Path(out).write_text(json.dumps(FIGURES, indent=1, sort_keys=True) + "\n")


def _out(run: Path, job: str) -> str:
    return (run / "slurm" / f"{job}.out").read_text()


def test_admin_requeue_is_recorded_counted_and_released(env: Env) -> None:
    """`scontrol requeue` mid-run: SIGTERM branch -> admin_requeue, action requeue (status counts it), the
    script releases the BeginTime hold itself, and restarts.jsonl agrees with Slurm's Restarts."""
    job, run = env.submit("adminrq", "train.max_steps=40", env=PACE)
    wait_step(run, 12)
    t0 = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    assert wait_job(job, 240) == "COMPLETED"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"], rec["node"]) == ("admin_requeue", "requeue", False, None)
    assert job_field(job, "Restarts") == "1" == str(len([r for r in [rec] if r["action"] == "requeue"]))
    assert starts(run)[-1]["restart_count"] == 1
    allocs = records(run / "slurm" / "allocations.jsonl")
    assert [a["event"] for a in allocs] == ["start", "end", "start", "end"]
    assert [a["attempt"] for a in allocs] == [0, 0, 1, 1]
    assert "released the requeue hold" in _out(run, job)
    resumed = first_step_after(run, t0)
    FIGURES["admin_requeue_to_first_step_s"] = round(resumed - t0, 1)
    assert resumed - t0 < 100  # Slurm's own hold alone is ~120 s (cred_expire)


def test_node_failure_is_recorded_with_its_node(env: Env) -> None:
    """`scontrol update nodename=node2 state=down` mid-run: Slurm requeues the job; mltrain records
    node_failure naming node2, counted; the next attempt runs on node1 + node3."""
    job, run = env.submit("nodedown", "train.max_steps=40", env=PACE)
    wait_step(run, 12)
    try:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=down", "reason=test"], check=True)
        assert wait_job(job, 240) == "COMPLETED"
    finally:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=resume"], capture_output=True)
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"]) == ("node_failure", "node2", "requeue", True)
    assert job_field(job, "Restarts") == "1"
    allocs = [a for a in records(run / "slurm" / "allocations.jsonl") if a["event"] == "start"]
    assert allocs[0]["nodes"] == ["node1", "node2"] and "node2" not in allocs[1]["nodes"]


def test_killed_rank_on_node1_restarts_in_place_blaming_node1(env: Env) -> None:
    """SIGKILL of the rank on node1 (rank 0): node1's own torchrun reports exitcode -9, node2's sees a
    connection reset; blame node1, restart torchrun in the same allocation (no requeue, Restarts stays 0)."""
    job, run = env.submit("inplace", "train.max_steps=40", env={"MLTRAIN_FAULT": "kill:25:@node1", **PACE})
    assert wait_job(job, 240) == "COMPLETED"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"]) == (
        "rank_failure",
        "node1",
        "restart_in_place",
        True,
    )
    assert rec["step"] == 20 and job_field(job, "Restarts") == "0"
    first, second = starts(run)
    assert second["step"] == 20 and second["restart_count"] == 0
    killed = max(
        r["time"] for r in records(run / "metrics.jsonl") if r.get("kind") == "train" and r["time"] < second["time"]
    )
    FIGURES["rank_failure_in_place_to_first_step_s"] = round(first_step_after(run, second["time"]) - killed, 1)
    allocs = records(run / "slurm" / "allocations.jsonl")
    assert [a["event"] for a in allocs] == ["start", "end"]  # one allocation, never given up


def test_failing_node_is_excluded_then_gives_up_after_max_restarts(env: Env) -> None:
    """No in-place restarts, max_restarts=1, the rank on node2 or node3 killed on every attempt: attempt 0 fails on
    node2 -> requeue with the real ExcNodeList=node2 (node3 is the spare); attempt 1 runs on node1 + node3 and
    fails on node3 -> give_up, job FAILED."""
    job, run = env.submit(
        "exclude",
        "launch.max_restarts=1",
        "launch.max_in_place_restarts=0",
        env={"MLTRAIN_FAULT": "kill:5:@node2,node3:always", **PACE},
    )
    wait_state(job, {"PENDING", "RUNNING"}, 30)
    deadline = time.monotonic() + 120
    while job_field(job, "Restarts") != "1" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_field(job, "ExcNodeList") == "node2"  # the real exclusion, read from slurmctld
    assert wait_job(job, 240) == "FAILED"
    first, second = records(run / "restarts.jsonl")
    assert (first["cause"], first["node"], first["action"], first["counted"]) == (
        "rank_failure",
        "node2",
        "requeue",
        True,
    )
    assert (second["cause"], second["node"], second["action"]) == ("rank_failure", "node3", "give_up")
    assert second["slurm_restart_count"] == 1 and second["attempt"] == 1
    allocs = [a for a in records(run / "slurm" / "allocations.jsonl") if a["event"] == "start"]
    assert allocs[1]["nodes"] == ["node1", "node3"]
    assert "giving up after 1 restarts" in _out(run, job)
    s1 = starts(run)[1]
    t_fail = max(
        r["time"] for r in records(run / "metrics.jsonl") if r.get("kind") == "train" and r["time"] < s1["time"]
    )
    FIGURES["rank_failure_requeue_to_first_step_s"] = round(first_step_after(run, s1["time"]) - t_fail, 1)


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
    world size 2; resuming a checkpoint on another world size is the trainer's part (branch i9-ckpt)."""
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
