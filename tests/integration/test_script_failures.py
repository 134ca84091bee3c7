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
from tests.helpers import mltrain_status, wait_gone

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


def _launch(tmp_path: Path, mode: str, script: str = PLAIN, name: str = "plain") -> tuple[subprocess.Popen, Path]:
    """`mltrain train run.yaml --nproc 2` of `script` in its own session (as a shell runs a foreground job, so a
    Ctrl-C can hit the whole group)."""
    (tmp_path / f"{name}.py").write_text(script)
    (tmp_path / "run.yaml").write_text(
        f"name: {name}\nbase_dir: {tmp_path}\nscript: {{path: {name}.py, args: [{mode}]}}\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "mltrain", "train", "run.yaml", "--nproc", "2"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    return proc, tmp_path / "runs" / name


def _status_row(run_dir: Path) -> str:
    return " ".join(mltrain_status(run_dir).split())


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


COOPERATIVE = """\
import os, sys, time
from mltrain import runtime
runtime.install_stop_handler()
open(f"pid{runtime.rank()}", "w").write(str(os.getpid()))
for step in range(600):
    time.sleep(0.1)
    runtime.log(step, loss=1.0)
    if runtime.stop_requested():
        if sys.argv[1] == "checkpoint":
            print(f"saved at step {step}", flush=True)
            runtime.exit_for_requeue()
"""


def _ctrl_c_launch(tmp_path: Path, mode: str) -> tuple[subprocess.Popen, Path]:
    """The cooperative script under `mltrain train`, once both ranks run."""
    proc, run_dir = _launch(tmp_path, mode, COOPERATIVE, "coop")
    deadline = time.time() + 120
    while not all((tmp_path / f"pid{r}").exists() for r in (0, 1)) and time.time() < deadline:
        assert proc.poll() is None, proc.communicate()[0][-2000:]
        time.sleep(0.1)
    return proc, run_dir


def test_ctrl_c_on_a_script_run_is_a_stop_request_not_a_crash(tmp_path):
    """Ctrl-C checkpoints and exits 75 (preempted), with no torchrun SignalException traceback and no
    "rank failure: rank 0 exited 1: KeyboardInterrupt"."""
    proc, run_dir = _ctrl_c_launch(tmp_path, "checkpoint")
    os.killpg(proc.pid, signal.SIGINT)  # what the terminal does
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-3000:]
    assert "Ctrl-C: checkpointing at the next step boundary" in out and "saved at step" in out, out[-3000:]
    assert "Traceback" not in out and "KeyboardInterrupt" not in out, out[-3000:]
    assert rundir.read_exit_reason(run_dir) == "preempted"
    assert not (run_dir / rundir.STOP_FILE).exists()
    logs = sorted((run_dir / "logs").glob("local-*.log"))
    assert logs and "saved at step" in logs[-1].read_text()


def test_second_ctrl_c_on_a_script_run_aborts(tmp_path):
    proc, run_dir = _ctrl_c_launch(tmp_path, "ignore")
    os.killpg(proc.pid, signal.SIGINT)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 130, out[-3000:]
    assert "aborted: second Ctrl-C" in out and "Traceback" not in out, out[-3000:]
    assert rundir.read_exit_reason(run_dir) == "interrupted"
    row = _status_row(run_dir)
    assert "interrupted" in row and "crash" not in row, row
    for r in (0, 1):
        pid = int((tmp_path / f"pid{r}").read_text())
        assert wait_gone(pid, 30), f"rank {r} (pid {pid}) still alive after the abort"
