"""The exact words and widths of `mltrain status` for Slurm runs: the requeue lines name the step the next
attempt resumes from, a finished run always says why it last restarted, node lists are compressed the way
Slurm writes them, and at COLUMNS=80 no line is wider than 80 columns (the detail lines wrap). Hand-written
launcher records and a fake Slurm client (no slurmctld runs in unit tests; the real one: tests/integration/
test_slurm*.py)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.helpers import fake_slurm_bin, mltrain_cmd, write_jsonl

from mltrain.launch import status

_jsonl = write_jsonl


_fake_slurm = fake_slurm_bin


def _run(tmp_path: Path, name: str = "r", max_steps: int = 100, ckpt: int | None = 20) -> Path:
    run = tmp_path / "runs" / name
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\ntrain:\n  max_steps: {max_steps}\n")
    _jsonl(run / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": "7", "time": 0.0}])
    if ckpt is not None:
        d = run / "checkpoints" / f"step_{ckpt:08d}"
        d.mkdir(parents=True)
        (d / "COMMITTED").write_text("")
    return run


def _trains(t0: float, first: int, last: int) -> list[dict]:
    recs: list[dict] = [{"kind": "start", "time": t0, "step": first - 1, "job_id": "7"}]
    recs += [
        {"kind": "train", "time": t0 + i, "step": s, "loss": 5.0, "tokens_per_s": 100.0, "step_time_s": 1.0}
        for i, s in enumerate(range(first, last + 1), 1)
    ]
    return recs


def test_requeued_and_waiting_says_where_it_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, squeue="PENDING|BeginTime|")
    run = _run(tmp_path)
    _jsonl(run / "metrics.jsonl", _trains(0.0, 1, 25))
    _jsonl(
        run / "restarts.jsonl",
        [{"time": 41.0, "job_id": "7", "cause": "node_failure", "node": "node2", "action": "requeue", "step": 20}],
    )
    st = status.run_status(run)
    assert st.state == "requeued"
    assert st.explanation == "requeued after node_failure on node2, waiting to start; resumes from step 20"


def test_requeue_decision_line_says_where_it_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The job has left the queue; the exit reason and the launcher's last decision explain it."""
    _fake_slurm(tmp_path, monkeypatch, scontrol="JobId=7 JobState=COMPLETED Reason=None NodeList=(null)")
    run = _run(tmp_path)
    _jsonl(run / "metrics.jsonl", _trains(0.0, 1, 25))
    (run / "control" / "exit_reason").write_text("hang\n")
    _jsonl(
        run / "restarts.jsonl",
        [{"cause": "hang", "node": "node2", "action": "requeue", "step": 20, "resume_step": 20, "failures": 1}],
    )
    st = status.run_status(run)
    assert st.explanation == (
        "hang: the watchdog dumped stacks to hangs/ and stopped the job on node2; requeued, resumes from step 20"
    )
    (run / "control" / "exit_reason").write_text("failed\n")
    _jsonl(run / "restarts.jsonl", [{"cause": "failed", "action": "restart_in_place", "step": 20}])
    assert status.run_status(run).explanation == "crashed (exception in the trainer); restarted in place"
    _jsonl(run / "restarts.jsonl", [{"cause": "failed", "action": "give_up", "failures": 2}])
    assert status.run_status(run).explanation == (
        "crashed (exception in the trainer); gave up after 2 restarts (launch.max_restarts)"
    )


def test_cancelled_run_says_where_a_new_submit_resumes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, scontrol="JobId=7 JobState=CANCELLED Reason=None NodeList=(null)")
    run = _run(tmp_path, ckpt=60)
    _jsonl(run / "metrics.jsonl", _trains(0.0, 1, 66))
    (run / "control" / "cancelled").write_text("7\n")
    st = status.run_status(run)
    assert (st.state, st.explanation) == (
        "cancelled",
        "cancelled with mltrain cancel; a new submit resumes from step 60",
    )


@pytest.mark.parametrize("node", ["node3", None])
def test_finished_run_always_says_why_it_last_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, node: str | None
) -> None:
    """A finished run names the cause of its last restart, with or without a node."""
    _fake_slurm(tmp_path, monkeypatch, scontrol="JobId=7 JobState=COMPLETED Reason=None NodeList=(null)")
    run = _run(tmp_path, max_steps=40, ckpt=40)
    _jsonl(run / "metrics.jsonl", [*_trains(0.0, 1, 40), {"kind": "exit", "time": 50.0, "step": 40, "reason": "done"}])
    (run / "control" / "exit_reason").write_text("done\n")
    _jsonl(run / "restarts.jsonl", [{"cause": "hang", "node": node, "action": "requeue", "step": 20}])
    st = status.run_status(run)
    assert st.state == "done" and st.explanation == "finished"
    assert st.notes == [f"last restart: hang{' on ' + node if node else ''}"]


@pytest.mark.parametrize(
    "nodes, short",
    [
        (["node1", "node2", "node3"], "node[1-3]"),
        (["p5-001", "p5-002", "p5-004", "p5-005", "gpu7"], "p5-[001-002,004-005],gpu7"),
        (["login"], "login"),
        (["a9", "a10", "a11"], "a[9-11]"),
        (["node", "node1", "node2", "node2"], "node,node[1-2]"),
        (["n09", "n10", "n08"], "n[08-10]"),
    ],
)
def test_compress_nodes_like_slurm(nodes: list[str], short: str) -> None:
    assert status.compress_nodes(nodes) == short


def _long_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 16-node run, running, with an allocation, a checkpoint and a node-failure restart behind it."""
    nodes = [f"p5-48xl-st-p548xl-{i:03d}" for i in range(1, 17)]
    _fake_slurm(tmp_path, monkeypatch, squeue="RUNNING|None|" + ",".join(nodes))
    run = _run(tmp_path, name="llama31-8b-continued-pretraining-v2", max_steps=250_000)
    now = time.time()
    _jsonl(
        run / "slurm" / "allocations.jsonl",
        [{"event": "start", "job_id": "7", "time": now - 7200, "nodes": nodes, "time_limit_s": 172800}],
    )
    _jsonl(run / "metrics.jsonl", _trains(now - 7000, 1, 4000))
    _jsonl(
        run / "restarts.jsonl",
        [{"cause": "node_failure", "node": nodes[6], "action": "requeue", "step": 3000, "counted": True}],
    )
    return run


def test_status_lines_fit_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The detail lines under each run fit 80 columns too (wrapped between their parts), whatever the node list."""
    run = _long_run(tmp_path, monkeypatch)
    st = status.run_status(run)
    assert st.nodes == "p5-48xl-st-p548xl-[001-016]"
    c = Console(record=True, width=80, color_system=None)
    status.show_status(str(run), console=c)
    lines = c.export_text().splitlines()
    assert all(len(line) <= 80 for line in lines), "\n".join(lines)
    first = lines.index(next(x for x in lines if x.startswith(run.name + ":")))
    detail = lines[first:]
    assert detail[0] == f"{run.name}: job 7 RUNNING;"  # wrapped between the parts, not inside one
    assert detail[1] == "  on p5-48xl-st-p548xl-[001-016]; allocation 2h00m in, 1d21h left;"
    assert detail[2].startswith("  ckpt step 20 (") and detail[2].endswith(" ago); running;")
    assert detail[3] == "  resumed after node_failure on p5-48xl-st-p548xl-007"


def test_cli_status_fits_columns_80(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _long_run(tmp_path, monkeypatch)
    env = {**os.environ, "COLUMNS": "80", "MLTRAIN_BASE_DIR": str(tmp_path)}
    r = subprocess.run(mltrain_cmd("status"), capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert run.name in r.stdout and all(len(line) <= 80 for line in r.stdout.splitlines()), r.stdout


@pytest.mark.parametrize(
    "reason, state, words",
    [
        ("done", "done", "finished"),
        ("hang", "hang", "hang: the watchdog dumped stacks to hangs/ and stopped the job"),
        ("failed", "failed", "crashed (exception in the trainer)"),
        ("lost_rank", "lost rank", "a rank or node was lost (no exit reason written)"),
        ("terminated", "terminated", "terminated by Slurm (scancel, preemption), not self-requeued"),
        ("health_check", "unhealthy", "GPU health check failed (slurm/health.jsonl)"),
        ("preempted", "stopped", "stopped for preemption / time limit (checkpointed)"),
    ],
)
def test_exit_reason_words(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reason: str, state: str, words: str
) -> None:
    _fake_slurm(tmp_path, monkeypatch, scontrol="JobId=7 JobState=COMPLETED Reason=None NodeList=(null)")
    run = _run(tmp_path)
    _jsonl(run / "metrics.jsonl", _trains(0.0, 1, 25))
    (run / "control" / "exit_reason").write_text(reason + "\n")
    st = status.run_status(run)
    assert (st.state, st.explanation, st.running, st.exit_reason) == (state, words, False, reason)


def test_local_stop_on_request_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = tmp_path / "runs" / "loc"
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text("name: loc\ntrain:\n  max_steps: 100\n")
    d = run / "checkpoints" / "step_00000030"
    d.mkdir(parents=True)
    (d / "COMMITTED").write_text("")
    recs = _trains(0.0, 1, 30)
    recs[0]["job_id"] = None
    recs.append({"kind": "exit", "time": 40.0, "step": 30, "reason": "preempted"})
    _jsonl(run / "metrics.jsonl", recs)
    (run / "control" / "exit_reason").write_text("preempted\n")
    st = status.run_status(run, now=time.time())
    assert st.explanation == "stopped on request at step 30 (checkpointed); mltrain train resumes from step 30"
    assert (st.state, st.step, st.ckpt_step) == ("stopped", 30, 30)


def test_pending_job_says_why_and_running_job_after_a_restart(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, squeue="PENDING|Resources|")
    run = _run(tmp_path, ckpt=None)
    st = status.run_status(run)
    assert (st.state, st.explanation, st.step) == ("pending", "pending (Resources)", None)
    assert status.detail_line(st) == "job 7 PENDING; pending (Resources)"
    _fake_slurm(tmp_path, monkeypatch, squeue="RUNNING|None|node[1-2]")
    _jsonl(run / "metrics.jsonl", _trains(time.time() - 30, 1, 25))
    _jsonl(run / "restarts.jsonl", [{"cause": "admin_requeue", "action": "requeue", "step": 20}])
    st = status.run_status(run)
    assert st.explanation == "running; resumed after admin_requeue" and st.restarts == 1 and st.preemptions == 0
    assert status._cells(st)[6] == "1"
    _jsonl(run / "restarts.jsonl", [{"cause": "preempted", "action": "requeue", "step": 20}])
    st = status.run_status(run)
    assert (st.restarts, st.preemptions, status._cells(st)[6]) == (1, 1, "1 (1p)")
