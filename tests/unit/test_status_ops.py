"""`status` and the operate records: straggler records from metrics.jsonl (line and `--json`), and the node a
restart blamed (a failed health check, a node failure). Hand-written records in the formats the trainer
(mltrain.telemetry.stragglers) and the batch script (restarts.jsonl) write; a fake Slurm client, as test_status.py.
The same on a real run: tests/integration/test_ops_stragglers.py and test_slurm_health.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.helpers import mltrain_cmd
from tests.unit.test_status import _fake_slurm, _jsonl, _slurm_run, _trains

from mltrain.launch import status


def _straggler(step: int, rank: int, host: str, t: float, med: float) -> dict:
    return {
        "kind": "straggler",
        "time": 1000.0 + step,
        "step": step,
        "rank": rank,
        "host": host,
        "gpu": "NVIDIA H100 80GB HBM3",
        "local_rank": rank % 8,
        "rank_time_s": t,
        "median_s": med,
        "slowdown": round(t / med - 1, 4),
        "threshold": 0.2,
        "window_steps": 50,
    }


def _local_run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "slow"
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text("name: slow\ntrain:\n  max_steps: 600\n")
    recs = _trains(time.time() - 3600, 1, 500, job=None)
    recs += [_straggler(100, 3, "p5-2", 0.5, 0.4), _straggler(300, 13, "p5-7", 0.6, 0.4)]
    recs += [_straggler(500, 13, "p5-7", 0.568, 0.4), {"kind": "exit", "time": 5000.0, "step": 500, "reason": "done"}]
    _jsonl(run / "metrics.jsonl", recs)
    (run / "control" / "exit_reason").write_text("done\n")
    return run


def test_straggler_line_and_json(tmp_path: Path) -> None:
    run = _local_run(tmp_path)
    st = status.run_status(run)
    assert st.stragglers == 3 and st.last_straggler is not None and st.last_straggler["step"] == 500
    line = status.straggler_line(st)
    assert line == "stragglers: 3 (last at step 500: rank 13 on p5-7, NVIDIA H100 80GB HBM3, 1.42x the median)"
    c = Console(record=True, width=80, color_system=None)
    status.show_status(str(run), console=c)
    assert "slow: stragglers: 3 (last at step 500: rank 13 on p5-7" in c.export_text()

    env = {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME")}
    r = subprocess.run(
        mltrain_cmd("status", str(run), "--json"),
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, "PATH": "/usr/bin:/bin", "MLTRAIN_BASE_DIR": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    (doc,) = json.loads(r.stdout)
    assert doc["name"] == "slow" and doc["state"] == "done" and doc["step"] == 500
    assert doc["stragglers"]["count"] == 3
    assert {k: doc["stragglers"]["last"][k] for k in ("step", "rank", "host")} == {
        "step": 500,
        "rank": 13,
        "host": "p5-7",
    }


def test_no_stragglers_no_line(tmp_path: Path) -> None:
    run = _local_run(tmp_path)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    _jsonl(run / "metrics.jsonl", [r for r in recs if r["kind"] != "straggler"])
    st = status.run_status(run)
    assert st.stragglers == 0 and status.straggler_line(st) is None
    assert status.status_json(st)["stragglers"] == {"count": 0, "last": None}


HC = {"time": 41.0, "job_id": "7", "attempt": 0, "cause": "health_check", "node": "node2", "counted": True}


def test_running_after_a_failed_health_check_names_the_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, squeue="RUNNING|None|node[1,3]")
    run = _slurm_run(tmp_path)
    _jsonl(run / "metrics.jsonl", _trains(time.time() - 60, 1, 10))
    _jsonl(run / "restarts.jsonl", [{**HC, "action": "requeue"}])
    st = status.run_status(run)
    assert st.state == "running" and st.restarts == 1
    assert st.explanation == "running; resumed after health_check on node2"


def test_requeued_and_given_up_after_health_check(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, squeue="PENDING|BeginTime|")
    run = _slurm_run(tmp_path)
    _jsonl(run / "restarts.jsonl", [{**HC, "action": "requeue"}])
    st = status.run_status(run)
    assert st.state == "requeued" and st.explanation.startswith("requeued after health_check on node2, waiting")

    _fake_slurm(tmp_path, monkeypatch, scontrol="JobId=7 JobState=FAILED Reason=None NodeList=(null)")
    _jsonl(run / "restarts.jsonl", [{**HC, "action": "requeue"}, {**HC, "node": "node3", "action": "give_up"}])
    st = status.run_status(run)
    assert st.state == "unhealthy"
    assert st.explanation.startswith("GPU health check failed (slurm/health.jsonl) on node3; gave up after")
    assert "gave up" in st.explanation and "last restart: health_check on node2" in status.detail_line(st)
