"""`mltrain status` and a run's deadline: the time left while it runs, why it stopped after."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from tests.helpers import fake_slurm_bin, write_jsonl

from mltrain.launch import status


def _run(tmp_path: Path, job: bool) -> Path:
    run = tmp_path / "runs" / "r"
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\ntrain:\n  max_steps: 100\n")
    if job:
        write_jsonl(run / "slurm" / "jobs.jsonl", [{"event": "submit", "job_id": "7", "time": 0.0}])
    return run


def _metrics(t0: float, deadline: float, source: str, job: str | None) -> list[dict]:
    start = {"kind": "start", "time": t0, "step": 0, "job_id": job}
    start["deadline"] = {"at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(deadline)), "time": deadline}
    start["deadline"]["source"] = source
    return [start] + [
        {"kind": "train", "time": t0 + 5 + s, "step": s, "loss": 5.0, "tokens_per_s": 100.0, "step_time_s": 1.0}
        for s in range(1, 21)
    ]


def test_a_running_job_shows_the_time_to_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_slurm_bin(tmp_path, monkeypatch, squeue="RUNNING|None|node[1-2]")
    run = _run(tmp_path, job=True)
    now = time.time()
    write_jsonl(run / "metrics.jsonl", _metrics(now - 30, now + 2 * 3600 + 5 * 60 + 20, "capacity block end", "7"))
    st = status.run_status(run, now=now)
    assert st.running and st.deadline_left_s == pytest.approx(7520)
    assert "deadline in 2h05m (capacity block end)" in status.detail_line(st)
    assert status.status_json(st)["deadline_source"] == "capacity block end"


def test_a_local_run_past_its_deadline_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = _run(tmp_path, job=False)
    now = time.time()
    write_jsonl(run / "metrics.jsonl", _metrics(now - 30, now - 90, "--deadline", None))
    st = status.run_status(run, now=now)
    assert st.running and "deadline passed 1m30s ago (--deadline)" in status.detail_line(st)


def test_a_run_without_a_deadline_shows_none(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = _run(tmp_path, job=False)
    now = time.time()
    recs = _metrics(now - 30, now + 60, "--deadline", None)
    del recs[0]["deadline"]
    write_jsonl(run / "metrics.jsonl", recs)
    st = status.run_status(run, now=now)
    assert st.running and st.deadline_at is None and "deadline" not in status.detail_line(st)


def test_a_run_stopped_before_its_deadline(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))
    run = _run(tmp_path, job=False)
    now = time.time()
    at = 1797764400.0  # 2026-12-20T11:00:00Z
    recs = _metrics(now - 60, at, "--deadline", None) + [
        {"kind": "exit", "time": now - 20, "step": 20, "reason": "deadline"}
    ]
    write_jsonl(run / "metrics.jsonl", recs)
    (run / "control" / "exit_reason").write_text("deadline\n")
    (run / "checkpoints" / "step_00000020").mkdir(parents=True)
    (run / "checkpoints" / "step_00000020" / "COMMITTED").write_text("{}")
    st = status.run_status(run, now=now)
    assert not st.running and st.state == "deadline" and st.deadline_left_s is None
    assert st.explanation == (
        "stopped before its deadline (checkpointed); its deadline: 2026-12-20T11:00:00Z (--deadline); "
        "mltrain train resumes from step 20"
    )
