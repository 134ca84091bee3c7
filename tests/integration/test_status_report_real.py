"""`status` and `report` on a real trainer's output (not hand-written records): a run killed without an
exit record, an idle gap, a manual restart that redoes lost steps, then a refused start.

Each step is a real `mltrain train` process on the tiny model (a few seconds each on CPU).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain import runstats
from mltrain.fsutil import read_jsonl
from mltrain.launch import status
from mltrain.report import write_report

pytestmark = pytest.mark.slow

NAME = "status-real-a-rather-long-run-name"
IDLE_GAP_S = 3.0


def _train(path: Path, *extra: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(mltrain_cmd("train", str(path), *extra), env=env, capture_output=True, text=True, timeout=240)


@pytest.fixture(scope="module")
def killed_then_resumed(tmp_path_factory, tiny_data_dir) -> dict:
    """Attempt 1 is SIGKILLed at step 6 (last checkpoint 3), then nothing for IDLE_GAP_S, then attempt 2
    resumes from step 3 and finishes at 8. Snapshots of the run dir's metrics are taken in between."""
    base = tmp_path_factory.mktemp("status-real")
    cfg = tiny_run_config(base, tiny_data_dir, NAME, max_steps=8)
    path = write_config(base / "run.yaml", cfg)
    run_dir = base / "runs" / NAME
    r1 = _train(path, env={"MLTRAIN_FAULT": "kill:6:0"})
    assert r1.returncode != 0, r1.stdout + r1.stderr
    # The run-dir lease's holder pid is dead: status says so at once, not after LOCAL_STALE_S of silence.
    killed_now = status.run_status(run_dir)
    killed = status.run_status(run_dir, now=time.time() + status.LOCAL_STALE_S + 1)
    killed_later = status.run_status(run_dir, now=time.time() + 10_000)
    time.sleep(IDLE_GAP_S)
    r2 = _train(path)
    assert r2.returncode == 0, (r2.stdout + r2.stderr)[-3000:]
    return {
        "path": path,
        "run_dir": run_dir,
        "killed": killed,
        "killed_later": killed_later,
        "now": killed_now,
        "console": r2.stdout,
    }


def test_trainer_records_carry_what_status_reads(killed_then_resumed):
    recs = read_jsonl(killed_then_resumed["run_dir"] / "metrics.jsonl")
    starts = [r for r in recs if r["kind"] == "start"]
    assert [s["step"] for s in starts] == [0, 3]  # attempt 2 resumed from the step-3 checkpoint
    trains = [r for r in recs if r["kind"] == "train"]
    for r in trains:
        for key in ("time", "step", "loss", "lr", "grad_norm", "tokens_per_s", "step_time_s", "mem_gib"):
            assert key in r, (key, r)
            assert r[key] is not None or key == "mem_gib", (key, r)  # no device memory figure on CPU
    assert recs[-1]["kind"] == "exit" and recs[-1]["reason"] == "done" and recs[-1]["step"] == 8


def test_killed_run_is_not_running_and_its_goodput_does_not_fall(killed_then_resumed):
    """A killed run shows no ETA, and its goodput stays the same however much time passes after it died."""
    st, later = killed_then_resumed["killed"], killed_then_resumed["killed_later"]
    assert not st.running and st.eta_s is None and later.eta_s is None
    assert st.state == "stopped" and "no exit recorded" in st.explanation
    assert st.step == 5 and st.ckpt_step == 3  # killed before step 6 ran
    assert st.goodput is not None and later.goodput == pytest.approx(st.goodput)
    assert not killed_then_resumed["now"].running and killed_then_resumed["now"].eta_s is None


def test_finished_run_status_and_report_agree(killed_then_resumed):
    run_dir = killed_then_resumed["run_dir"]
    recs = read_jsonl(run_dir / "metrics.jsonl")
    st = status.run_status(run_dir)
    assert (st.state, st.step, st.total_steps, st.eta_s, st.explanation) == ("done", 8, 8, None, "finished")
    assert st.ckpt_step == 8 and st.ckpt_age_s is not None and st.ckpt_age_s >= 0
    c = Console(record=True, width=120, color_system=None)
    summary = write_report(run_dir, console=c)
    assert summary["restarts"] == st.restarts == 1  # one definition (runstats.restarts_of)
    assert summary["goodput"] == pytest.approx(st.goodput)
    assert "train loss (mean of first" in c.export_text()
    # one figure each: the step reached and the last train loss read the same in status, report and the
    # trainer's end-of-run line: one definition, not a mean of its own per reader
    assert summary["steps"] == st.step == 8
    assert summary["last_loss"] == pytest.approx(st.loss)
    assert f"train loss {st.loss:.3f} (mean of last 8 logged)" in killed_then_resumed["console"]

    # goodput: the SIGKILLed attempt's steps 4..6 were redone, the idle gap between the runs is not the run's
    second = [i for i, r in enumerate(recs) if r["kind"] == "start"][1]
    first_kept = [r for r in recs[:second] if r["kind"] == "train" and r["step"] <= 3]
    resumed = [r for r in recs[second:] if r["kind"] == "train"]
    assert [r["step"] for r in first_kept + resumed] == list(range(1, 9))  # log_every 1: one record per step
    productive = sum(r["step_time_s"] for r in first_kept + resumed)
    assert runstats.productive_seconds(recs) == pytest.approx(productive)
    held = runstats.allocated_seconds(runstats.local_allocations(recs), recs, now=time.time())
    wall = recs[-1]["time"] - recs[0]["time"]
    assert held < wall - IDLE_GAP_S + 0.5
    assert st.goodput == pytest.approx(productive / held)


def test_status_table_fits_80_columns_and_keeps_the_name(killed_then_resumed, monkeypatch):
    run_dir = killed_then_resumed["run_dir"]
    monkeypatch.setenv("MLTRAIN_BASE_DIR", str(run_dir.parent.parent))
    c = Console(record=True, width=80, color_system=None)
    status.show_status(None, console=c)
    lines = c.export_text().splitlines()
    detail = next(i for i, line in enumerate(lines) if line.startswith(NAME + ":"))
    table = lines[:detail]
    assert len(table) == 3 and all(len(line) <= 80 for line in table), lines  # header, rule, one row
    assert table[2].startswith(NAME + " ") and "done" in table[2] and "8/8" in table[2]
    assert lines[detail].startswith(f"{NAME}: ckpt step 8 (") and "finished" in lines[detail]


def test_refused_start_keeps_the_run_finished(killed_then_resumed):
    """A refused start leaves a finished run reading "done", not "stopped: config error ... see the job's .err log"."""
    r = _train(killed_then_resumed["path"], "--set", "model.hidden_size=32", "--set", "model.ffn_hidden_size=64")
    assert r.returncode == 2, r.stdout + r.stderr
    st = status.run_status(killed_then_resumed["run_dir"])
    assert st.state == "done" and st.eta_s is None
    # the refused start wrote nothing (no config.yaml, no exit reason): the run reads exactly as before
    assert st.explanation == "finished" and st.step == 8 and st.total_steps == 8
