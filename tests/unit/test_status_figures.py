"""One definition per figure (mltrain.runstats): the step reached, the last train loss and the exit reason read
the same in `status`, `status --json`, `report` and the trainer's end-of-run line. Hand-written metrics in the
trainer's record format; the same on a real trainer's output: tests/integration/test_status_report_real.py."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.helpers import write_jsonl

from mltrain import runstats
from mltrain.launch import status
from mltrain.report import summarize, write_report

_jsonl = write_jsonl


def _local_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, max_steps: int = 400) -> Path:
    monkeypatch.setenv("PATH", str(tmp_path / "nobin"))  # no Slurm client: a local run
    run = tmp_path / "runs" / "r"
    (run / "control").mkdir(parents=True)
    (run / "config.yaml").write_text(f"name: r\ntrain:\n  max_steps: {max_steps}\n")
    return run


def _train(t: float, step: int, loss: float) -> dict:
    return {"kind": "train", "time": t, "step": step, "loss": loss, "tokens_per_s": 100.0, "step_time_s": 0.1}


def test_a_stop_between_logged_steps_is_the_step_reached_everywhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stop between logged steps: status, report and the summary line all say the exit record's step (317),
    not the last logged record's (310)."""
    run = _local_run(tmp_path, monkeypatch)
    recs = [{"kind": "start", "time": 0.0, "step": 0}]
    recs += [_train(float(s), s, 9.0 - s / 100) for s in range(10, 311, 10)]
    recs.append({"kind": "exit", "time": 320.0, "step": 317, "reason": "preempted"})
    _jsonl(run / "metrics.jsonl", recs)
    (run / "control" / "exit_reason").write_text("preempted\n")
    st = status.run_status(run, now=400.0)
    assert st.step == 317 == runstats.steps_reached(recs)
    assert summarize(recs)["steps"] == 317
    assert runstats.summary_line(recs).startswith("317 steps, ")
    assert status._cells(st)[2] == "317/400"


def test_the_last_train_loss_is_one_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume from an older checkpoint redoes steps: the redone records replace the earlier attempt's, and
    status, report and the console's line show the mean of the same last 10 records."""
    run = _local_run(tmp_path, monkeypatch, max_steps=25)
    recs = [{"kind": "start", "time": 0.0, "step": 0}]
    recs += [_train(float(s), s, 10.0 - 0.1 * s) for s in range(1, 31)]  # killed at 30, last checkpoint 20
    recs.append({"kind": "start", "time": 100.0, "step": 20})
    recs += [_train(100.0 + s, s, 3.0) for s in range(21, 26)]
    recs.append({"kind": "exit", "time": 130.0, "step": 25, "reason": "done"})
    _jsonl(run / "metrics.jsonl", recs)
    (run / "control" / "exit_reason").write_text("done\n")
    surviving = [10.0 - 0.1 * s for s in range(16, 21)] + [3.0] * 5  # steps 16..25 of the final history
    want = sum(surviving) / 10
    assert [r["step"] for r in runstats.surviving_trains(recs)] == list(range(1, 26))
    assert runstats.last_loss(recs) == (pytest.approx(want), 10)
    st = status.run_status(run, now=200.0)
    assert st.loss == pytest.approx(want) and st.step == 25
    summary = summarize(recs)
    assert summary["last_loss"] == pytest.approx(want) and summary["steps"] == 25
    assert summary["first_loss"] == pytest.approx(sum(10.0 - 0.1 * s for s in range(1, 11)) / 10)
    c = Console(record=True, width=120, color_system=None)
    write_report(run, console=c)
    assert f"{summary['first_loss']:.3f} -> {want:.3f}" in c.export_text()
    assert f"train loss {summary['first_loss']:.3f} -> {want:.3f} (mean of first/last 10 logged)" in (
        runstats.summary_line(recs)
    )
    assert status._cells(st)[3] == f"{want:.3f}"


def test_short_run_loss_labels_say_how_many_records() -> None:
    recs = [_train(float(s), s, x) for s, x in enumerate((8.0, 6.0, 4.0, 2.0), 1)]
    assert runstats.loss_change(recs) == (7.0, 5.0, 2, 4)
    assert runstats.loss_label(2, 4) == "mean of first 2 / last 4 logged"
    assert runstats.loss_label(10, 10) == "mean of first/last 10 logged"
    assert runstats.last_loss(recs) == (5.0, 4)


def test_a_continuation_is_running_with_no_exit_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A finished run started again (train.max_steps raised): its old control/exit_reason "done" is not this
    attempt's, so `status --json` never says "exit_reason": "done" and "running": true together."""
    run = _local_run(tmp_path, monkeypatch, max_steps=60)
    now = time.time()
    recs = [{"kind": "start", "time": now - 500, "step": 0}]
    recs += [_train(now - 500 + s, s, 5.0) for s in range(1, 31)]
    recs.append({"kind": "exit", "time": now - 460, "step": 30, "reason": "done"})
    (run / "control" / "exit_reason").write_text("done\n")
    os.utime(run / "control" / "exit_reason", (now - 460, now - 460))
    recs.append({"kind": "start", "time": now - 100, "step": 30})
    recs += [_train(now - 90 + s, s, 4.0) for s in range(31, 41)]
    _jsonl(run / "metrics.jsonl", recs)
    st = status.run_status(run, now=now)
    assert st.running and st.state == "running" and st.step == 40
    doc = status.status_json(st)
    assert doc["running"] is True and doc["exit_reason"] is None, doc


def test_a_finished_run_reports_its_exit_reason(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _local_run(tmp_path, monkeypatch, max_steps=30)
    recs = [{"kind": "start", "time": 0.0, "step": 0}]
    recs += [_train(float(s), s, 5.0) for s in range(1, 31)]
    recs.append({"kind": "exit", "time": 40.0, "step": 30, "reason": "done"})
    _jsonl(run / "metrics.jsonl", recs)
    (run / "control" / "exit_reason").write_text("done\n")
    doc = status.status_json(status.run_status(run, now=time.time()))
    assert (doc["running"], doc["exit_reason"], doc["state"], doc["step"]) == (False, "done", "done", 30)
