"""`mltrain logs RUN [-f]`: the newest of the local and Slurm logs; a Slurm job's stdout and stderr
interleaved by time. The Slurm client is absent here (PATH without it), so a followed job reads as ended."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path

import pytest
from rich.console import Console
from tests.helpers import mltrain_cmd

from mltrain.errors import RunDirError
from mltrain.launch import logs


def _run(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "r"
    (run / "slurm").mkdir(parents=True)
    (run / "config.yaml").write_text("name: r\n")
    return run


def _slurm_job(run: Path, job: str = "9") -> tuple[Path, Path]:
    (run / "slurm" / "jobs.jsonl").write_text(json.dumps({"event": "submit", "job_id": job, "time": 1.0}) + "\n")
    out, err = run / "slurm" / f"{job}.out", run / "slurm" / f"{job}.err"
    out.write_text(
        "[mltrain 2026-11-30T10:00:00Z job 9 attempt 0] start on node[1-2]\n"
        "[mltrain] step 10/100 | loss 5.0\n"
        "[mltrain 2026-11-30T10:00:05Z job 9 attempt 0] srun exited 1\n"
    )
    err.write_text(
        "[mltrain 2026-11-30T10:00:03Z job 9 attempt 0] rank 1 on node2 failed\nTraceback (most recent call last):\n"
    )
    return out, err


def test_interleave_by_time_keeps_each_files_order() -> None:
    merged = logs.interleave(
        [
            ("", ["no stamp yet", "2026-01-01T00:00:01 a", "b (after a)", "2026-01-01T00:00:09 c"]),
            ("[err] ", ["2026-01-01T00:00:05 x", "y (after x)"]),
        ]
    )
    assert [line for _p, line in merged] == [
        "no stamp yet",
        "2026-01-01T00:00:01 a",
        "b (after a)",
        "2026-01-01T00:00:05 x",
        "y (after x)",
        "2026-01-01T00:00:09 c",
    ]
    assert [p for p, _ in merged][3:5] == ["[err] ", "[err] "]


def test_slurm_logs_interleaved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Slurm stdout and stderr lines come interleaved in time order, not all of stdout then all of stderr."""
    run = _run(tmp_path)
    _slurm_job(run)
    c = Console(record=True, width=200, color_system=None)
    src = logs.show_logs(str(run), console=c)
    assert src.kind == "slurm"
    lines = c.export_text().splitlines()
    assert lines == [
        "[mltrain 2026-11-30T10:00:00Z job 9 attempt 0] start on node[1-2]",
        "[mltrain] step 10/100 | loss 5.0",
        "[err] [mltrain 2026-11-30T10:00:03Z job 9 attempt 0] rank 1 on node2 failed",
        "[err] Traceback (most recent call last):",
        "[mltrain 2026-11-30T10:00:05Z job 9 attempt 0] srun exited 1",
    ]


def test_newest_of_local_and_slurm_logs(tmp_path: Path) -> None:
    run = _run(tmp_path)
    out, err = _slurm_job(run)
    old = time.time() - 100
    os.utime(out, (old, old))
    os.utime(err, (old, old))
    (run / "logs").mkdir()
    older = run / "logs" / "local-20261130-090000.log"
    older.write_text("old local run\n")
    os.utime(older, (old - 50, old - 50))
    newest = run / "logs" / "local-20261130-110000.log"
    newest.write_text("[mltrain] step 3/8 | loss 6.9\n")
    assert logs.pick_source(run).files == [newest]
    c = Console(record=True, width=200, color_system=None)
    logs.show_logs(str(run), console=c)
    assert "step 3/8" in c.export_text() and "old local run" not in c.export_text()
    os.utime(out, None)  # the Slurm job wrote last: it wins
    os.utime(newest, (old, old))
    assert logs.pick_source(run).kind == "slurm"


def test_no_logs_is_one_line(tmp_path: Path) -> None:
    run = _run(tmp_path)
    with pytest.raises(RunDirError, match="no logs yet"):
        logs.show_logs(str(run))


def test_follow_prints_lines_as_they_arrive_and_stops_when_the_writer_is_gone(tmp_path: Path) -> None:
    run = _run(tmp_path)
    (run / "logs").mkdir()
    f = run / "logs" / "local-20261130-110000.log"
    f.write_text("first\n")
    alive = threading.Event()
    alive.set()

    def writer() -> None:
        with open(f, "a") as fh:
            for i in range(3):
                time.sleep(0.05)
                fh.write(f"line {i}\n")
                fh.flush()
            fh.write("partial without newline")
        alive.clear()

    c = Console(record=True, width=200, color_system=None)
    t = threading.Thread(target=writer)
    t.start()
    logs.follow(
        c, [("", logs._Tail(f))], still_running=lambda: alive.is_set() or t.is_alive(), sleep=lambda s: time.sleep(0.01)
    )
    t.join()
    assert c.export_text().splitlines() == ["first", "line 0", "line 1", "line 2", "partial without newline"]


def test_logs_cli_follow_on_an_ended_job_returns(tmp_path: Path) -> None:
    run = _run(tmp_path)
    _slurm_job(run)
    env = {**os.environ, "PATH": "/usr/bin:/bin"}  # no squeue/scontrol/sacct: the job reads as ended
    r = subprocess.run(mltrain_cmd("logs", str(run), "-f"), capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, r.stderr
    assert "rank 1 on node2 failed" in r.stdout and "srun exited 1" in r.stdout


def test_follow_keeps_each_files_time_across_reads(tmp_path: Path) -> None:
    """An unstamped stdout line read later still sorts after the stderr line stamped before it."""
    out, err = tmp_path / "9.out", tmp_path / "9.err"
    out.write_text("2026-01-01T00:00:05 stdout stamped\n")
    err.write_text("")
    tails = [("", logs._Tail(out)), ("[err] ", logs._Tail(err))]
    c = Console(record=True, width=200, color_system=None)
    logs._drain(c, tails, whole_lines=True)
    with open(out, "a") as fh:
        fh.write("stdout unstamped, after 00:05\n")
    err.write_text("2026-01-01T00:00:02 stderr from before\n")
    logs._drain(c, tails, whole_lines=True)
    assert c.export_text().splitlines() == [
        "2026-01-01T00:00:05 stdout stamped",
        "[err] 2026-01-01T00:00:02 stderr from before",
        "stdout unstamped, after 00:05",
    ]
