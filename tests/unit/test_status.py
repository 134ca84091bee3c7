"""`status` on Slurm cases (hand-written restarts.jsonl / allocations.jsonl records in the launcher format, a fake
Slurm client for the scheduler's view: no slurmctld runs in unit tests), the runstats definitions, and
tables that fit 80 columns. The same figures on a real trainer's output: tests/integration/
test_status_report_real.py.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.helpers import fake_slurm_bin, mltrain_cmd, write_jsonl

from mltrain import runstats
from mltrain.launch import status

_jsonl = write_jsonl


_fake_slurm = fake_slurm_bin


def _slurm_run(tmp_path: Path, name: str = "r", max_steps: int = 100) -> Path:
    run = tmp_path / "runs" / name
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: {name}\ntrain:\n  max_steps: {max_steps}\n")
    _jsonl(run / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": "7", "time": 0.0}])
    return run


def _trains(t0: float, first: int, last: int, dt: float = 1.0, job: str | None = "7") -> list[dict]:
    recs = [{"kind": "start", "time": t0, "step": first - 1, "job_id": job}]
    recs += [
        {"kind": "train", "time": t0 + 5 + i, "step": s, "loss": 5.0, "tokens_per_s": 100.0, "step_time_s": dt}
        for i, s in enumerate(range(first, last + 1))
    ]
    return recs


# --------------------------------------------------------------------------- runstats definitions


def test_restarts_are_requeues_and_restarts_in_place_only() -> None:
    recs = [
        {"cause": "preempted", "action": "requeue"},
        {"cause": "rank_failure", "action": "restart_in_place"},
        {"cause": "time_limit", "action": "requeue"},
        {"cause": "cancelled", "action": "none"},
        {"cause": "node_failure", "action": "give_up"},
    ]
    assert runstats.count_restarts(recs) == 3 and runstats.count_preemptions(recs) == 2
    assert runstats.restarts_of([{"kind": "start"}] * 5, recs) == 3  # launcher records win over trainer starts
    assert runstats.restarts_of([{"kind": "start"}] * 3, []) == 2


def test_goodput_counts_only_the_runs_own_allocations(tmp_path: Path) -> None:
    """Job 7: 0-100 s, requeued, pending 150 s, 250-350 s, cancelled; resubmitted 650 s later as job 8."""
    run = _slurm_run(tmp_path)
    _jsonl(
        run / "slurm" / "allocations.jsonl",
        [
            {"event": "start", "job_id": "7", "time": 0.0, "nodes": ["n1", "n2"], "time_limit_s": 100},
            {"event": "end", "job_id": "7", "time": 100.0},
            {"event": "start", "job_id": "7", "time": 250.0, "nodes": ["n1", "n2"], "time_limit_s": 100},
            {"event": "end", "job_id": "7", "time": 350.0},
            {"event": "start", "job_id": "8", "time": 1000.0, "nodes": ["n3", "n4"], "time_limit_s": 100},
            {"event": "end", "job_id": "8", "time": 1100.0},
        ],
    )
    # 50 s of steps per allocation; the second resumes from step 40 (steps 41..50 were lost)
    m = _trains(0.0, 1, 50) + _trains(250.0, 41, 90) + _trains(1000.0, 91, 100, job="8")
    allocs = runstats.read_allocations(run)
    assert [(a.start, a.end, a.job_id) for a in allocs] == [(0, 100, "7"), (250, 350, "7"), (1000, 1100, "8")]
    assert runstats.productive_seconds(m) == pytest.approx(40 + 50 + 10)
    assert runstats.goodput(m, allocs, now=99_999.0) == pytest.approx(100 / 300)


def test_goodput_of_an_allocation_without_end_event() -> None:
    m = _trains(0.0, 1, 20)  # last record at t=24
    open_alloc = [runstats.Allocation(start=0.0, end=None, job_id="7", nodes=["n1"])]
    dead = [runstats.goodput(m, open_alloc, now=now) for now in (30.0, 3_000.0, 300_000.0)]
    assert dead == [pytest.approx(20 / 24)] * 3  # died: does not keep falling as time passes
    assert runstats.goodput(m, open_alloc, now=40.0, live_job_id="7") == pytest.approx(20 / 40)  # running: now


def test_local_runs_idle_time_between_runs_does_not_count() -> None:
    m = _trains(0.0, 1, 10, job=None) + [{"kind": "exit", "time": 20.0, "step": 10, "reason": "preempted"}]
    m += _trains(10_000.0, 11, 20, job=None) + [{"kind": "exit", "time": 10_020.0, "step": 20, "reason": "done"}]
    assert runstats.goodput(m) == pytest.approx(20 / 40)


def test_smoothing_eta_and_durations() -> None:
    trains = [{"loss": float(i), "tokens_per_s": 10.0 * i} for i in range(1, 31)]
    assert runstats.smoothed(trains, "loss") == pytest.approx(sum(range(21, 31)) / 10)
    assert runstats.eta_seconds(40, 100, 0.5, running=True) == pytest.approx(30.0)
    assert runstats.eta_seconds(40, 100, 0.5, running=False) is None
    assert [runstats.fmt_duration(s) for s in (5, 125, 3 * 3600 + 420, 2 * 86400 + 3600)] == [
        "5s",
        "2m05s",
        "3h07m",
        "2d01h",
    ]
    assert runstats.console_progress(40, 100, started_at=0.0, now=185.0, step_times=[0.5] * 12) == (
        "elapsed 3m05s, ETA 30s"
    )
    trains = [{"kind": "train", "step": i, "loss": x} for i, x in enumerate((8.0, 6.0, 4.0, 2.0), 1)]
    assert runstats.loss_change(trains, n=10) == (7.0, 5.0, 2, 4)  # the last is status's last_loss


# --------------------------------------------------------------------------- status on Slurm cases


def test_cancelled_pending_job_is_cancelled_not_requeued(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A job cancelled while pending after a requeue reads cancelled (it would resume from step 20), with no ETA;
    neither "stopped for preemption" nor "requeued"."""
    _fake_slurm(tmp_path, monkeypatch, scontrol="JobId=7 JobState=CANCELLED Reason=None NodeList=(null) Restarts=1")
    run = _slurm_run(tmp_path)
    _jsonl(
        run / "metrics.jsonl", _trains(0.0, 1, 25) + [{"kind": "exit", "time": 40.0, "step": 25, "reason": "preempted"}]
    )
    (run / "control" / "exit_reason").write_text("preempted\n")
    _jsonl(
        run / "restarts.jsonl", [{"time": 41.0, "job_id": "7", "cause": "preempted", "action": "requeue", "step": 20}]
    )
    (run / "control" / "cancelled").write_text("7\n")
    (run / "checkpoints" / "step_00000020").mkdir(parents=True)
    (run / "checkpoints" / "step_00000020" / "COMMITTED").write_text("{}")
    st = status.run_status(run)
    assert st.state == "cancelled" and st.eta_s is None and st.restarts == 1
    assert "requeued" not in st.explanation and "preemption" not in st.explanation
    assert "resumes from step 20" in st.explanation
    c = Console(record=True, width=80, color_system=None)
    status.show_status(str(run), console=c)
    text = c.export_text()
    assert "preemption" not in text and "requeued" not in text and "CANCELLED" in text


def test_running_job_shows_nodes_allocation_time_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, squeue="RUNNING|None|node[1-2]")
    run = _slurm_run(tmp_path)
    now = time.time()
    _jsonl(
        run / "slurm" / "allocations.jsonl",
        [{"event": "start", "job_id": "7", "time": now - 600, "nodes": ["node1", "node2"], "time_limit_s": 3600}],
    )
    _jsonl(run / "metrics.jsonl", _trains(now - 590, 1, 40, dt=0.5))
    st = status.run_status(run, now=now)
    assert st.running and st.state == "running" and st.nodes == "node[1-2]"
    assert st.alloc_elapsed_s == pytest.approx(600) and st.alloc_left_s == pytest.approx(3000)
    assert st.eta_s == pytest.approx(60 * 0.5)
    line = status.detail_line(st)
    assert "job 7 RUNNING" in line and "on node[1-2]" in line and "allocation 10m00s in, 50m00s left" in line


@pytest.mark.parametrize("state, reason", [("FAILED", "failed"), ("CANCELLED", "preempted"), ("COMPLETED", "done")])
def test_ended_jobs_have_no_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str, reason: str) -> None:
    _fake_slurm(tmp_path, monkeypatch, scontrol=f"JobId=7 JobState={state} Reason=None NodeList=(null)")
    run = _slurm_run(tmp_path)
    _jsonl(run / "metrics.jsonl", _trains(time.time() - 30, 1, 20))
    (run / "control" / "exit_reason").write_text(reason + "\n")
    st = status.run_status(run)
    assert not st.running and st.eta_s is None


def test_requeued_pending_job_waits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_slurm(tmp_path, monkeypatch, squeue="PENDING|BeginTime|")
    run = _slurm_run(tmp_path)
    _jsonl(run / "metrics.jsonl", _trains(0.0, 1, 25))
    (run / "control" / "exit_reason").write_text("preempted\n")
    _jsonl(run / "restarts.jsonl", [{"time": 41.0, "job_id": "7", "cause": "time_limit", "action": "requeue"}])
    st = status.run_status(run)
    assert st.state == "requeued" and st.eta_s is None and st.preemptions == 1
    assert st.explanation.startswith("requeued after time_limit, waiting to start")


def test_local_config_error_does_not_point_at_a_slurm_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = tmp_path / "runs" / "loc"
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text("name: loc\ntrain:\n  max_steps: 10\n")
    (run / "control" / "exit_reason").write_text("config_error\n")
    st = status.run_status(run)
    assert ".err log" not in st.explanation and "mltrain logs loc" in st.explanation


def test_status_table_fits_80_columns(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """At 80 columns each run is one table row and its name is never split."""
    _fake_slurm(tmp_path, monkeypatch, squeue="RUNNING|None|node[1-2]")
    now = time.time()
    names = ["llama31-8b-continued-pretraining-v2", "q", "qwen25-7b-cpt-restart-after-node-failure"]
    for i, name in enumerate(names):
        run = _slurm_run(tmp_path, name, max_steps=250_000)
        _jsonl(run / "metrics.jsonl", _trains(now - 100, 1, 40 + i * 12_345, dt=0.75))
    c = Console(record=True, width=80, color_system=None)
    monkeypatch.setenv("MLTRAIN_BASE_DIR", str(tmp_path))
    rows = status.show_status(None, console=c)
    lines = c.export_text().splitlines()
    assert len(rows) == 3 and all(len(line) <= 80 for line in lines), "\n".join(lines)
    table = lines[: lines.index(next(line for line in lines if line.startswith(names[0] + ":")))]
    assert len(table) == 2 + len(names)  # header, rule, one line per run: no wrapped rows
    for name in names:
        assert any(line.startswith(name + " ") for line in table), name  # never split


def test_status_of_chosen_runs(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"name: {name}\ntrain:\n  max_steps: 10\n")
    r = subprocess.run(
        mltrain_cmd("status", "a", "b"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "MLTRAIN_BASE_DIR": str(tmp_path), **_pythonpath()},
    )
    assert r.returncode == 0, r.stderr
    assert "a: " in r.stdout and "b: " in r.stdout and "c: " not in r.stdout


def _pythonpath() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k in ("PYTHONPATH", "HOME", "OMP_NUM_THREADS")}


def test_running_local_run_shows_elapsed_and_eta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = tmp_path / "runs" / "loc"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("name: loc\ntrain:\n  max_steps: 100\n")
    now = time.time()
    _jsonl(run / "metrics.jsonl", _trains(now - 65, 1, 50, dt=0.2, job=None))
    st = status.run_status(run, now=now)
    assert st.running and st.state == "running" and st.eta_s == pytest.approx(50 * 0.2)
    assert st.alloc_elapsed_s == pytest.approx(65) and st.alloc_left_s is None
    assert "allocation 1m05s in" in status.detail_line(st)


def test_console_summary_line_uses_the_same_definitions() -> None:
    """For the trainer's end-of-run line: the same restarts, labelled loss and goodput as status/report."""
    m = _trains(0.0, 1, 10, job=None) + [{"kind": "exit", "time": 20.0, "step": 10, "reason": "preempted"}]
    m += _trains(10_000.0, 11, 20, job=None) + [{"kind": "exit", "time": 10_020.0, "step": 20, "reason": "done"}]
    line = runstats.summary_line(m, restarts=[])
    assert line == "20 steps, train loss 5.000 -> 5.000 (mean of first/last 10 logged), restarts 1, goodput 50%"


def test_a_decision_about_an_earlier_job_does_not_describe_the_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Job 7 was cancelled at step 20 (a node move: `fleet rebalance --apply`), job 8 resumed and finished; Slurm
    has forgotten job 8 (aged out). The run is done, not cancelled: the last launcher decision is about job 7."""
    _fake_slurm(tmp_path, monkeypatch)  # knows no job
    run = _slurm_run(tmp_path, max_steps=30)
    _jsonl(
        run / "slurm" / "jobs.jsonl",
        [{"event": "submit", "job_id": j, "time": t} for j, t in (("7", 0.0), ("8", 50.0))],
    )
    recs = _trains(0.0, 1, 20) + [{"kind": "exit", "time": 40.0, "step": 20, "reason": "preempted"}]
    recs += _trains(60.0, 21, 30, job="8") + [{"kind": "exit", "time": 90.0, "step": 30, "reason": "done"}]
    _jsonl(run / "metrics.jsonl", recs)
    _jsonl(run / "restarts.jsonl", [{"time": 41.0, "job_id": "7", "cause": "cancelled", "action": "none", "step": 20}])
    (run / "control" / "exit_reason").write_text("done\n")
    st = status.run_status(run)
    assert st.job_id == "8" and st.state == "done", (st.state, st.explanation)
