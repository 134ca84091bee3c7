"""One writer per run dir, Ctrl-C as a stop request, `mltrain stop`, stale stop files, SIGTERM to a rank:
real `mltrain train` processes (one process, and torchrun with 2 gloo workers) signalled mid-run.

The runs pause with MLTRAIN_FAULT=wait:<step>:<rank> (the rank waits before that step until a stop
request arrives), so the tests never depend on how fast this machine trains.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from tests.helpers import mltrain_cmd, mltrain_status, tiny_run_config, wait_gone, write_config

from mltrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow


class Run:
    """`mltrain train` in its own process group (as a shell runs a foreground job), output collected."""

    def __init__(self, cfg_path: Path, nproc: int, fault: str | None = None, *extra: str) -> None:
        env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT", "SLURM_JOB_ID")}
        if fault:
            env["MLTRAIN_FAULT"] = fault
        self.p = subprocess.Popen(
            mltrain_cmd("train", str(cfg_path), "--nproc", str(nproc), *extra),
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._threads = [
            threading.Thread(target=self._read, args=(self.p.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.p.stderr, self.err), daemon=True),
        ]
        for t in self._threads:
            t.start()

    @staticmethod
    def _read(pipe, sink: list[str]) -> None:
        for line in pipe:
            sink.append(line)

    def wait_for(self, text: str, timeout: float = 180) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in list(self.out) + list(self.err):
                if text in line:
                    return line
            if self.p.poll() is not None:
                time.sleep(0.2)
                if not any(text in line for line in self.out + self.err):
                    pytest.fail(f"exited {self.p.returncode} before {text!r}:\n{self.text()[-4000:]}")
            time.sleep(0.05)
        pytest.fail(f"no {text!r} within {timeout}s:\n{self.text()[-4000:]}")

    def interrupt(self) -> None:
        """What a terminal's Ctrl-C does: SIGINT to the whole foreground process group."""
        os.killpg(self.p.pid, signal.SIGINT)

    def finish(self, timeout: float = 180) -> int:
        rc = self.p.wait(timeout=timeout)
        for t in self._threads:
            t.join(timeout=10)
        return rc

    def text(self) -> str:
        return "".join(self.out) + "".join(self.err)


def run(cfg_path: Path, nproc: int = 1, *extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT", "SLURM_JOB_ID")}
    return subprocess.run(
        mltrain_cmd("train", str(cfg_path), "--nproc", str(nproc), *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


def config(tmp_path: Path, data: Path, name: str, **train) -> Path:
    return write_config(tmp_path / f"{name}.yaml", tiny_run_config(tmp_path, data, name, **train))


def starts(run_dir: Path) -> list[int]:
    return [r["step"] for r in read_metrics(run_dir) if r["kind"] == "start"]


def test_second_start_is_refused_and_changes_nothing_then_stop_ends_the_first(tmp_path, tiny_data_dir):
    """Two starts of one run: the second `mltrain train` on the same run refuses with one line
    naming the holder, leaves config.yaml byte-identical; `mltrain stop` then ends the first run."""
    cfg = config(tmp_path, tiny_data_dir, "dual")
    run_dir = tmp_path / "runs" / "dual"
    first = Run(cfg, 1, "wait:3:0")
    first.wait_for("injected fault: wait at step 3")
    before = (run_dir / "config.yaml").read_bytes()

    second = run(cfg, 1, "--set", "train.max_steps=90")
    assert second.returncode == 2, second.stdout[-2000:] + second.stderr[-2000:]
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in second.stderr, second.stderr
    assert "in use by host" in lines[0] and f"pid {first.p.pid}" in lines[0] and "since" in lines[0]
    assert (run_dir / "config.yaml").read_bytes() == before
    assert starts(run_dir) == [0]

    stop = subprocess.run(mltrain_cmd("stop", str(run_dir)), capture_output=True, text=True, timeout=60)
    assert stop.returncode == 0 and "stop requested" in stop.stdout, stop.stdout + stop.stderr
    assert first.finish() == 75, first.text()[-3000:]
    assert "stopped (mltrain stop): checkpointed step 3, exit 75; run again to resume" in first.text()
    assert not (run_dir / "control" / "stop").exists()  # consumed
    assert not (run_dir / "control" / "lease.json").exists()  # released
    assert (run_dir / "checkpoints" / "step_00000003" / "COMMITTED").is_file()

    nothing = subprocess.run(mltrain_cmd("stop", str(run_dir)), capture_output=True, text=True, timeout=60)
    assert nothing.returncode != 0 and "nothing to stop" in nothing.stderr and "Traceback" not in nothing.stderr


@pytest.mark.parametrize("nproc", [1, 2])
def test_first_ctrl_c_checkpoints_and_exits_75_then_resumes(tmp_path, tiny_data_dir, nproc):
    """Ctrl-C: checkpoint, exit 75, the next start resumes. With two ranks the resumed start is then stopped by
    SIGTERM to one rank, and resumed once more to the end."""
    parallel = "ddp" if nproc > 1 else "none"
    cfg = config(tmp_path, tiny_data_dir, f"int{nproc}", parallel=parallel)
    run_dir = tmp_path / "runs" / f"int{nproc}"
    r = Run(cfg, nproc, "wait:3:0")
    r.wait_for("injected fault: wait at step 3")
    r.interrupt()
    rc = r.finish()
    text = r.text()
    assert rc == 75, text[-4000:]
    assert "interrupted: checkpointed step 3, exit 75; run again to resume" in text
    assert "Traceback" not in text and "SignalException" not in text, text[-4000:]
    assert (run_dir / "checkpoints" / "step_00000003" / "COMMITTED").is_file()
    assert (run_dir / "control" / "exit_reason").read_text().strip() == "preempted"
    assert not (run_dir / "control" / "stop").exists()
    logs = sorted((run_dir / "logs").glob("local-*.log"))
    assert logs and "interrupted: checkpointed step 3" in logs[-1].read_text()

    if nproc == 1:
        again = run(cfg, nproc)
        assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
        assert starts(run_dir) == [0, 3]
        assert "done: step 8/8" in again.stdout and "train loss" in again.stdout and "resumed step 3" in again.stdout
        return
    # Two ranks: the resumed start is stopped once more by what Slurm's SIGTERM does to a worker (SIGTERM to
    # rank 1: all ranks checkpoint at the next boundary, exit 75), and the next start resumes from that step.
    term = Run(cfg, 2, "wait:5:1:always")  # :always: the fault already fired once in this run
    line = term.wait_for("injected fault: wait at step 5")
    assert "resumed from" in term.text() and "(step 3)" in term.text(), term.text()[-4000:]
    os.kill(int(line.rsplit("pid ", 1)[1].rstrip(")\n")), signal.SIGTERM)
    assert term.finish() == 75, term.text()[-4000:]
    assert "checkpointed step 5, exit 75" in term.text() and "Traceback" not in term.text()
    assert (run_dir / "checkpoints" / "step_00000005" / "COMMITTED").is_file()
    again = run(cfg, 2)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert "resumed from" in again.stdout and "resumed step 5" in again.stdout
    assert starts(run_dir) == [0, 3, 5]
    assert "done: step 8/8" in again.stdout and "train loss" in again.stdout
    assert max(x["step"] for x in read_metrics(run_dir) if x["kind"] == "train") == 8


@pytest.mark.parametrize("nproc", [1, 2])
def test_second_ctrl_c_aborts_at_once(tmp_path, tiny_data_dir, nproc):
    parallel = "ddp" if nproc > 1 else "none"
    cfg = config(tmp_path, tiny_data_dir, f"abort{nproc}", parallel=parallel)
    r = Run(cfg, nproc, "hang:3:0")  # rank 0 never reaches the next step boundary
    line = r.wait_for("injected fault: hang at step 3")
    worker_pid = int(line.rsplit("pid ", 1)[1].rstrip(")\n"))
    r.interrupt()
    r.wait_for("Ctrl-C: checkpointing at the next step boundary")
    r.interrupt()
    rc = r.finish(timeout=60)
    text = r.text()
    assert rc == 130, text[-4000:]
    assert sum("aborted: second Ctrl-C" in line for line in r.out + r.err) == 1, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    run_dir = tmp_path / "runs" / f"abort{nproc}"
    assert (run_dir / "control" / "exit_reason").read_text().strip() == "interrupted"  # was "failed": "crashed"
    shown = mltrain_status(run_dir)
    assert "interrupted" in shown and "crashed" not in shown, shown
    assert wait_gone(worker_pid, 30), f"rank 0 (pid {worker_pid}) still alive after the abort"


def test_stale_stop_file_is_removed_at_start_and_a_refused_start_leaves_the_finished_run_as_it_was(
    tmp_path, tiny_data_dir
):
    """A control/stop older than this start is removed, not honoured: otherwise every later start would do one
    step and exit 75. A start of the finished run with an incompatible config is refused and changes nothing."""
    cfg = config(tmp_path, tiny_data_dir, "stale", max_steps=4)
    run_dir = tmp_path / "runs" / "stale"
    stop = run_dir / "control" / "stop"
    stop.parent.mkdir(parents=True)
    stop.write_text("")
    past = time.time() - 60
    os.utime(stop, (past, past))
    r = run(cfg, 1)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "removed a stale stop request" in r.stdout
    assert not stop.exists()
    assert max(x["step"] for x in read_metrics(run_dir) if x["kind"] == "train") == 4

    before = {p: (run_dir / p).read_bytes() for p in ("config.yaml", "control/exit_reason", "metrics.jsonl")}
    r = run(cfg, 1, "--set", "train.max_steps=90", "--set", "model.hidden_size=128")
    assert r.returncode == 2 and "incompatible config" in r.stderr, r.stdout[-2000:] + r.stderr[-2000:]
    assert {p: (run_dir / p).read_bytes() for p in before} == before
    assert not (run_dir / "control" / "exit_message").exists()
    assert json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])["reason"] == "done"
