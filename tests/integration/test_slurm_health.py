"""`launch.health_check: true` on a REAL Slurm 22.05 (3 local nodes, jobs of 2): the batch script runs
`mltrain health` on every node before training, a failing node is excluded (the real ExcNodeList) and the
job requeued without it; the next attempt passes its own check and trains to the end.

There is no GPU here, so the failure is injected with the tests-only MLTRAIN_HEALTH_FAKE_FAIL_HOSTS (a
node named there FAILs `mltrain health`); everything else (srun on each node, the records, the
exclusion, the requeue, the hold release) is the real thing. Also: the Prometheus file_sd writer
expanding a node list with the real `scontrol show hostnames`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from slurm_fixture import (
    Env,
    job_field,
    make_env,
    records,
    wait_job,
)

from mltrain.launch.status import detail_line, run_status
from mltrain.telemetry import file_sd

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.slow,
]


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory):
    return make_env(tmp_path_factory, "slurm-health")


def test_failing_node_is_excluded_by_the_health_check(env: Env) -> None:
    job, run = env.submit(
        "health",
        "train.max_steps=6",
        "checkpoint.every_steps=3",
        "launch.health_check=true",
        "launch.health_burn_in_s=0",
        env={"MLTRAIN_HEALTH_FAKE_FAIL_HOSTS": "node2"},
    )
    assert wait_job(job, 240) == "COMPLETED"
    out = (run / "slurm" / f"{job}.out").read_text()

    health = records(run / "slurm" / "health.jsonl")
    by_attempt = {(r["attempt"], r["host"]): r["status"] for r in health}
    # attempt 0 on node1 + node2 (no GPU: node1 SKIPs, node2 FAILs); attempt 1 on node1 + node3, no node2
    assert by_attempt == {(0, "node1"): "SKIP", (0, "node2"): "FAIL", (1, "node1"): "SKIP", (1, "node3"): "SKIP"}
    failed = next(r for r in health if r["status"] == "FAIL")
    assert failed["job_id"] == job and "MLTRAIN_HEALTH_FAKE_FAIL_HOSTS" in failed["failures"][0]
    assert "mltrain-health node2 FAIL" in out

    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["node"], rec["action"], rec["counted"], rec["attempt"]) == (
        "health_check",
        "node2",
        "requeue",
        True,
        0,
    )
    assert job_field(job, "ExcNodeList") == "node2" and job_field(job, "Restarts") == "1"
    allocs = [a for a in records(run / "slurm" / "allocations.jsonl") if a["event"] == "start"]
    assert allocs[0]["nodes"] == ["node1", "node2"] and allocs[1]["nodes"] == ["node1", "node3"]
    # the first attempt never trained; the second trained to the end
    starts = [r for r in records(run / "metrics.jsonl") if r.get("kind") == "start"]
    assert len(starts) == 1 and starts[0]["time"] > allocs[1]["time"]
    assert max(r["step"] for r in records(run / "metrics.jsonl") if r.get("kind") == "train") == 6
    assert "health check failed on node2: restart 1 of 2 without it" in out
    assert "health check passed on node[1,3]" in out

    st = run_status(run)
    assert st.state == "done" and st.restarts == 1, st
    assert "health_check on node2" in detail_line(st)
    status_out = env.mltrain("status", str(run))
    assert "health_check on node2" in status_out, status_out


def test_file_sd_expands_a_real_slurm_node_list(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """`python -m mltrain.telemetry.file_sd` without the host argument: the node list through the real scontrol."""
    run = env.root / "runs" / "sd"
    monkeypatch.setitem(os.environ, "SLURM_JOB_NODELIST", "node[1-3]")
    monkeypatch.setitem(os.environ, "SLURM_JOB_ID", "77")
    assert file_sd.main([str(run), "sd", "9410"]) == 0
    doc = json.loads((env.root / "prometheus" / "targets" / "sd--job-77.json").read_text())
    assert doc == [
        {"targets": ["node1:9410", "node2:9410", "node3:9410"], "labels": {"run": "sd", "slurm_job_id": "77"}}
    ]
