"""Recovery on a REAL Slurm 22.05 (3 local nodes, jobs of 2, so a spare exists): every restart is recorded
with its true cause, node and count (restarts.jsonl) and the allocation in slurm/allocations.jsonl; Slurm's
BeginTime hold is released by the job itself; a rank failure restarts torchrun in place; a failing node is
excluded (the real ExcNodeList) and the job gives up after launch.max_restarts; the time limit arriving while
the stop checkpoint is still running (longer than KillWait) and continuing on fewer nodes: test_slurm_limits.py.

Each test is an independent run with its own name; the module's data dir is its own, so this file can
run in parallel with test_slurm.py. MLTRAIN_SLURM_BENCH_JSON=<path> writes the recovery-time figures there.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from slurm_fixture import (
    Env,
    first_step_after,
    job_field,
    make_env,
    records,
    starts,
    wait_job,
    wait_state,
    wait_step,
    write_figures,
)

from mltrain.launch.status import run_status

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
]
PACE = {"MLTRAIN_FAULT_STEP_S": "0.15"}  # steps of >= 0.15 s: "at step N" does not race a fast machine
# rank 0 waits before step 13 until a stop request (its SIGTERM) arrives: the test acts once step 12 is logged,
# so Slurm's SIGTERM lands mid-run however fast or loaded the machine is, and no step is slowed down
HOLD_AT_13 = {"MLTRAIN_FAULT": "wait:13:0"}
FIGURES: dict[str, float] = {}


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory):
    yield make_env(tmp_path_factory, "slurm-recovery")
    write_figures(FIGURES)


def _out(run: Path, job: str) -> str:
    return (run / "slurm" / f"{job}.out").read_text()


def test_admin_requeue_is_recorded_counted_and_released(env: Env) -> None:
    """`scontrol requeue` mid-run: SIGTERM branch -> admin_requeue, action requeue (status counts it), the
    script releases the BeginTime hold itself, and restarts.jsonl agrees with Slurm's Restarts."""
    job, run = env.submit("adminrq", "train.max_steps=40", env=HOLD_AT_13)
    wait_step(run, 12)
    t0 = time.time()
    subprocess.run(["scontrol", "requeue", job], check=True)
    assert wait_job(job, 240) == "COMPLETED"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"], rec["node"]) == ("admin_requeue", "requeue", False, None)
    assert job_field(job, "Restarts") == "1" == str(len([r for r in [rec] if r["action"] == "requeue"]))
    assert starts(run)[-1]["restart_count"] == 1
    # the record waits for the trainer's SIGTERM checkpoint: it names the step the next attempt resumed from
    # (not the checkpoint before it, e.g. 100 while the run resumed from 101)
    assert rec["step"] == rec["resume_step"] == starts(run)[1]["step"] > 12, (rec, starts(run))
    st = run_status(run)  # status counts the restart Slurm counts (Restarts=1)
    assert st.restarts == 1 and st.state == "done", st
    allocs = records(run / "slurm" / "allocations.jsonl")
    assert [a["event"] for a in allocs] == ["start", "end", "start", "end"]
    assert [a["attempt"] for a in allocs] == [0, 0, 1, 1]
    assert "released the requeue hold" in _out(run, job)
    resumed = first_step_after(run, starts(run)[1]["time"])
    FIGURES["admin_requeue_to_first_step_s"] = round(resumed - t0, 1)
    assert resumed - t0 < 100  # Slurm's own hold alone is ~120 s (cred_expire)


def test_node_failure_is_recorded_with_its_node(env: Env) -> None:
    """`scontrol update nodename=node2 state=down` mid-run: Slurm requeues the job; mltrain records
    node_failure naming node2, counted; the next attempt runs on node1 + node3."""
    job, run = env.submit("nodedown", "train.max_steps=40", env=HOLD_AT_13)
    wait_step(run, 12)
    try:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=down", "reason=test"], check=True)
        assert wait_job(job, 240) == "COMPLETED"
    finally:
        subprocess.run(["scontrol", "update", "nodename=node2", "state=resume"], capture_output=True)
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"]) == ("node_failure", "node2", "requeue", True)
    assert job_field(job, "Restarts") == "1"
    st = run_status(run)  # a counted restart, not "stopped for preemption"
    assert st.restarts == 1 and st.state == "done", st
    allocs = [a for a in records(run / "slurm" / "allocations.jsonl") if a["event"] == "start"]
    assert allocs[0]["nodes"] == ["node1", "node2"] and "node2" not in allocs[1]["nodes"]


def test_killed_rank_on_node1_restarts_in_place_blaming_node1(env: Env) -> None:
    """SIGKILL of the rank on node1 (rank 0): node1's own torchrun reports exitcode -9, node2's sees a
    connection reset; blame node1, restart torchrun in the same allocation (no requeue, Restarts stays 0)."""
    job, run = env.submit("inplace", "train.max_steps=30", env={"MLTRAIN_FAULT": "kill:25:@node1", **PACE})
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
    # the real exclusion, read from slurmctld: made once the requeued job is pending, before its hold is released
    while job_field(job, "ExcNodeList") != "node2" and time.monotonic() < deadline:
        time.sleep(0.2)
    assert job_field(job, "ExcNodeList") == "node2"
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
    assert "giving up after 1 restarts" in _out(run, job) and "released the requeue hold" in _out(run, job)
    s1 = starts(run)[1]
    t_fail = max(
        r["time"] for r in records(run / "metrics.jsonl") if r.get("kind") == "train" and r["time"] < s1["time"]
    )
    FIGURES["rank_failure_requeue_to_first_step_s"] = round(first_step_after(run, s1["time"]) - t_fail, 1)
