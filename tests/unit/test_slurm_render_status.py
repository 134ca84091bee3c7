"""`mltrain status` from run-dir files alone: goodput, explanations, and no crash without Slurm.

(The live-Slurm status checks are in tests/integration/test_slurm.py.)
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rich.console import Console

from mltrain import runstats
from mltrain.launch import slurm, status


def _write_metrics(run: Path, records: list[dict]) -> None:
    run.mkdir(parents=True, exist_ok=True)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run / "config.yaml").write_text("name: r\ntrain:\n  max_steps: 100\n")


def test_goodput_counts_only_surviving_steps() -> None:
    m = [{"kind": "start", "time": 0.0, "step": 0}]
    m += [{"kind": "train", "time": 10.0 + i, "step": i, "step_time_s": 1.0} for i in range(1, 31)]
    # crash at step 30; the last checkpoint was step 20: steps 21..30 are lost work
    m += [{"kind": "start", "time": 60.0, "step": 20}]
    m += [{"kind": "train", "time": 60.0 + i, "step": 20 + i, "step_time_s": 1.0} for i in range(1, 81)]
    m += [{"kind": "exit", "time": 150.0, "step": 100, "reason": "done"}]
    # productive: 20 + 80 steps of 1 s = 100 s; allocated: 0..40 and 60..150 = 130 s (the idle gap
    # between the crash's last record and the next start is not the run's time; runstats.goodput)
    assert runstats.goodput(m, now=999.0) == pytest.approx(100 / 130)
    assert runstats.goodput([], now=1.0) is None


def test_local_run_without_slurm_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no squeue/scontrol/sacct at all
    run = tmp_path / "runs" / "r"
    _write_metrics(
        run,
        [
            {"kind": "start", "time": 0.0, "step": 0},
            {
                "kind": "train",
                "time": 5.0,
                "step": 40,
                "loss": 3.25,
                "tokens_per_s": 1234.0,
                "mfu": 0.41,
                "step_time_s": 0.5,
            },
        ],
    )
    st = status.run_status(run, now=10.0)
    assert (st.step, st.total_steps, st.loss, st.job_id, st.scheduler) == (40, 100, 3.25, None, None)
    assert st.eta_s == pytest.approx(30.0)
    console = Console(width=200, record=True)
    monkeypatch.setenv("MLTRAIN_BASE_DIR", str(tmp_path))
    rows = status.show_status(None, console=console)
    text = console.export_text()
    assert len(rows) == 1 and "scheduler" not in text and "3.250" in text and "41.0%" in text


def test_config_error_explained_and_sacct_failure_tolerated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # fake Slurm client: squeue knows nothing, scontrol fails, sacct fails like accounting_storage/none
    fb = tmp_path / "bin"
    fb.mkdir()
    for name, body in {
        "squeue": "exit 0",
        "scontrol": "echo 'Invalid job id' >&2; exit 1",
        "sacct": "echo 'Slurm accounting storage is disabled' >&2; exit 1",
    }.items():
        (fb / name).write_text(f"#!/bin/bash\n{body}\n")
        (fb / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fb}:/usr/bin:/bin")
    run = tmp_path / "runs" / "bad"
    (run / "control").mkdir(parents=True)
    (run / "slurm").mkdir()
    (run / "slurm" / "jobs.jsonl").write_text(json.dumps({"event": "submit", "job_id": "42", "time": 1.0}) + "\n")
    (run / "slurm" / "42.err").write_text("noise\nerror: data/x/manifest.json: no prepared data\n")
    (run / "control" / "exit_reason").write_text("config_error\n")
    (run / "restarts.jsonl").write_text(json.dumps({"cause": "config_error", "action": "none"}) + "\n")
    assert slurm.query_job("42") is None
    st = status.run_status(run)
    assert st.explanation == "stopped: config error, not requeued: data/x/manifest.json: no prepared data"
    assert st.restarts == 0 and "unknown to Slurm" in (st.scheduler or "")
    console = Console(width=60, record=True)
    status.show_status(str(run), console=console)
    lines = console.export_text().splitlines()
    assert all(len(line) <= 60 for line in lines)  # wrapped at the console's width, nothing cut
    assert "not requeued: data/x/manifest.json: no prepared data" in " ".join(x.strip() for x in lines)


def test_restart_history_words(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = tmp_path / "runs" / "r"
    _write_metrics(run, [{"kind": "start", "time": 0.0, "step": 0}])
    (run / "control").mkdir()
    (run / "control" / "exit_reason").write_text("hang\n")
    (run / "restarts.jsonl").write_text(
        json.dumps({"cause": "preempted", "action": "requeue", "resume_step": 10})
        + "\n"
        + json.dumps({"cause": "hang", "action": "give_up", "failures": 3})
        + "\n"
    )
    st = status.run_status(run)
    assert st.restarts == 1 and st.preemptions == 1
    assert st.explanation.startswith("hang: the watchdog") and "gave up after 3 restarts" in st.explanation
