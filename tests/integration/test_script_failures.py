"""A plain script that ignores mltrain's API, under `mltrain train --nproc 2` (real torchrun): SIGKILL of one rank
is reported as a rank failure; exit code 2 as a config error (never as a preemption)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mltrain import rundir

pytestmark = pytest.mark.slow

PLAIN = """\
import os, sys, time
rank = int(os.environ["RANK"])
open(f"pid{rank}", "w").write(str(os.getpid()))
if sys.argv[1] == "exit2" and rank == 0:
    print("error: --lr must be positive", file=sys.stderr)
    sys.exit(2)
time.sleep(120)
"""


def _launch(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    (tmp_path / "plain.py").write_text(PLAIN)
    (tmp_path / "run.yaml").write_text(
        f"name: plain\nbase_dir: {tmp_path}\nscript: {{path: plain.py, args: [{mode}]}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mltrain", "train", "run.yaml", "--nproc", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    return proc, tmp_path / "runs" / "plain"


def _status_row(run_dir: Path) -> str:
    st = subprocess.run(
        [sys.executable, "-m", "mltrain", "status", str(run_dir)],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "160"},
    )
    assert st.returncode == 0, st.stderr
    return " ".join(st.stdout.split())


def test_sigkill_of_one_rank_is_a_rank_failure(tmp_path):
    proc, run_dir = _launch(tmp_path, "sleep")
    pid1 = tmp_path / "pid1"
    deadline = time.time() + 120
    while not pid1.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    time.sleep(0.2)
    os.kill(int(pid1.read_text()), signal.SIGKILL)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode not in (0, 2, 75), out[-2000:]
    assert "rank failure: rank(s)" in out and "1" in out.split("rank failure: rank(s)")[1].split("ended")[0]
    assert rundir.read_exit_reason(run_dir) == "lost_rank"
    assert "lost rank" in _status_row(run_dir)


def test_exit_code_2_is_a_config_error_not_a_preemption(tmp_path):
    proc, run_dir = _launch(tmp_path, "exit2")
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 2, out[-2000:]
    assert "config error: rank 0 exited 2" in out and "not restarted" in out
    assert rundir.read_exit_reason(run_dir) == "config_error"
    row = _status_row(run_dir)
    assert "config err" in row and "config error, not requeued: rank 0 exited 2" in row and "preempt" not in row
