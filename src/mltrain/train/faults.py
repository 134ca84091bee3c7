"""What the trainer does when the world breaks: stop requests, the hang watchdog, fault injection.

- Stop request: SIGUSR1/SIGTERM or a first SIGINT (Ctrl-C) to a rank, or the file `<run>/control/stop`
  (the Slurm batch script creates it on USR1, `mltrain stop` and a local launcher's Ctrl-C too, so no
  signal has to cross srun, enroot and torchrun). At the next step boundary all ranks agree, checkpoint
  and exit with exit_codes.REQUEUE; rank 0 then removes the stop file (it is consumed). A second SIGINT
  aborts at once (exit 130) with one line.
- Deadline (train/deadline.py): with one, every step boundary is a stop check, and a stop at the last boundary
  before the deadline checkpoints through the same agreed path and exits with the reason `deadline`.
- Watchdog: a daemon thread; when no step finished within `hang_timeout_s` it dumps every thread's
  stack into `<run>/hangs/` and hard-exits with exit_codes.HANG, so a stuck collective costs
  minutes instead of the rest of the allocation.
- Fault injection for tests: MLTRAIN_FAULT=<hang|kill|stop|wait>:<step>:<rank>, only on a job's first
  attempt (`stop` sends the rank SIGUSR1, the same path as a Slurm preemption warning; `wait` pauses the
  rank before that step until a stop request arrives, so a test can signal a run mid-training without
  sleeps that depend on the machine's speed); a trailing `:always` fires on every attempt, and a rank of
  `@node2,node3` means the first process on those Slurm nodes. MLTRAIN_FAULT_STEP_S=<s> makes every step
  take at least that long (all attempts), so tests that act "at step N" do not race a fast machine;
  MLTRAIN_FAULT_SLOW_STOP_S=<s> (first attempt only) holds the trainer that long once a stop was
  requested, like a stop checkpoint slower than the grace/KillWait.
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import signal
import sys
import threading
import time
from pathlib import Path

from mltrain import exit_codes, rundir
from mltrain.fsutil import atomic_write


def write_exit_reason(run_dir: Path, reason: str) -> None:
    """Record why the trainer stopped (one word) for the launcher's requeue decision."""
    try:
        atomic_write(run_dir / rundir.EXIT_REASON_FILE, reason + "\n")
    except OSError:
        pass  # best effort: the launcher treats a missing reason as a failure


def peer_hung(run_dir: Path, since: float) -> bool:
    """A rank's watchdog wrote "hang" at or after `since` (this attempt's start). The collective error the
    other ranks then get is that hang's consequence: written as "failed" over it, the launcher would take a
    stuck collective for a crashed rank (and blame its node)."""
    try:
        return rundir.exit_reason_since(run_dir, since) == exit_codes.REASON_HANG
    except OSError:  # there but unreadable: not known to be a hang
        return False


INTERRUPTED = "SIGINT"


class StopRequest:
    """A flag set by SIGUSR1/SIGTERM/SIGINT or by the presence of the stop file."""

    def __init__(self, run_dir: Path, announce: bool = True) -> None:
        self.run_dir = run_dir
        self.stop_file = run_dir / rundir.STOP_FILE
        self.signalled: str | None = None
        self.seen = "stop file"  # what the stop that ended training was (set by the training loop)
        self.announce = announce  # rank 0 prints the Ctrl-C lines
        for sig in (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT):
            try:
                signal.signal(sig, self._handler)
            except ValueError:  # not the main thread (e.g. under a test runner thread)
                pass

    def _handler(self, signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if name == INTERRUPTED and self.signalled == INTERRUPTED:
            if self.announce:
                print("aborted: second Ctrl-C, not checkpointed (the next start resumes from the newest checkpoint)")
            sys.stdout.flush()
            write_exit_reason(self.run_dir, exit_codes.REASON_INTERRUPTED)
            os._exit(exit_codes.INTERRUPTED)
        if name == INTERRUPTED and self.announce:
            print("[mltrain] Ctrl-C: checkpointing at the next step boundary, then exiting (Ctrl-C again aborts)")
            sys.stdout.flush()
        self.signalled = name

    def requested(self, check_file: bool) -> bool:
        hit = self.signalled is not None or (check_file and self.stop_file.exists())
        if hit:
            _slow_stop_fault()
        return hit

    def why(self) -> str:
        """The signal's name, else the stop file's first line (SIGINT when a launcher's Ctrl-C wrote it)."""
        if self.signalled:
            return self.signalled
        try:
            lines = self.stop_file.read_text().strip().splitlines()
        except OSError:
            lines = []
        if lines:
            return lines[0].strip()[:40] or "stop file"
        return "stop file" if self.stop_file.exists() else "a signal to another rank"

    def consume(self) -> None:
        """Remove the stop file once the stop it asked for is done, so the next start trains."""
        with contextlib.suppress(OSError):
            self.stop_file.unlink()


_SLOW_STOP_DONE: list[bool] = []


def _slow_stop_fault() -> None:
    """Test hook MLTRAIN_FAULT_SLOW_STOP_S: the first stop seen on a job's first attempt takes that long."""
    delay = float(os.environ.get("MLTRAIN_FAULT_SLOW_STOP_S", "0") or 0)
    if delay and not _SLOW_STOP_DONE and os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0"):
        _SLOW_STOP_DONE.append(True)
        print(f"[mltrain] injected fault: stop handling delayed {delay:.0f} s", flush=True)
        time.sleep(delay)


def remove_stale_stop(run_dir: Path, started: float) -> float | None:
    """Remove a stop file written before `started` (a leftover, not a request to this start); return
    its mtime when one was removed."""
    path = run_dir / rundir.STOP_FILE
    try:
        mtime = path.stat().st_mtime
    except OSError:
        return None
    if mtime >= started:
        return None
    with contextlib.suppress(OSError):
        path.unlink()
    return mtime


def write_stop_request(run_dir: Path, why: str) -> Path:
    """Ask the trainer of `run_dir` to checkpoint and exit at its next step boundary."""
    path = run_dir / rundir.STOP_FILE
    atomic_write(path, f"{why}\n", fsync=False)
    return path


class Watchdog:
    """Fires when `beat()` has not been called for `timeout_s` seconds (armed by the first beat)."""

    def __init__(self, run_dir: Path, rank: int, timeout_s: float | None) -> None:
        self.run_dir = run_dir
        self.rank = rank
        self.timeout_s = timeout_s
        self._last: float | None = None
        self._paused = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if timeout_s:
            self._thread = threading.Thread(target=self._run, name="mltrain-watchdog", daemon=True)
            self._thread.start()

    def beat(self) -> None:
        self._last = time.monotonic()

    def _run(self) -> None:
        assert self.timeout_s is not None
        while not self._stop.wait(min(1.0, self.timeout_s / 4)):
            if self._last is None or self._paused:
                continue
            idle = time.monotonic() - self._last
            if idle > self.timeout_s:
                self._fire(idle)

    def _fire(self, idle: float) -> None:
        hang_dir = self.run_dir / rundir.HANGS_DIR
        hang_dir.mkdir(parents=True, exist_ok=True)
        path = hang_dir / f"rank{self.rank}-{int(time.time())}.txt"
        with open(path, "w") as f:
            f.write(
                f"mltrain watchdog: rank {self.rank} finished no step for {idle:.0f}s "
                f"(hang_timeout_s={self.timeout_s}); stacks of all threads:\n\n"
            )
            f.flush()
            faulthandler.dump_traceback(file=f, all_threads=True)
        write_exit_reason(self.run_dir, exit_codes.REASON_HANG)
        print(f"[mltrain] rank {self.rank}: no step for {idle:.0f}s, stacks in {path}; exiting", flush=True)
        os._exit(exit_codes.HANG)

    def close(self) -> None:
        self._stop.set()


class FaultInjector:
    """Test hook: MLTRAIN_FAULT=hang:5:1 makes rank 1 stop stepping before step 5; kill:5:1 SIGKILLs it;
    stop:5:1 sends it SIGUSR1 (a preemption warning); wait:5:1 pauses it before step 5 until a stop
    request (signal or stop file) arrives, at most WAIT_MAX_S; a trailing `:always` fires on every attempt;
    a rank of `@node2,node3` means the first process on Slurm node node2 or node3."""

    WAIT_MAX_S = 300.0

    def __init__(self, run_dir: Path, rank: int, stop: StopRequest | None = None) -> None:
        self.kind: str | None = None
        self.step = -1
        self.stop = stop
        self.marker = run_dir / rundir.CONTROL_DIR / "fault_done"
        spec = os.environ.get("MLTRAIN_FAULT", "")
        first_attempt = os.environ.get("SLURM_RESTART_COUNT", "0") in ("", "0")
        self.step_s = float(os.environ.get("MLTRAIN_FAULT_STEP_S", "0") or 0)
        self._t_last = time.monotonic()
        always = spec.endswith(":always")  # every attempt, every in-place restart (tests of giving up)
        spec = spec.removesuffix(":always")
        if not spec or not (always or (first_attempt and not self.marker.exists())):
            return
        try:
            kind, step, fault_rank = spec.split(":")
            if fault_rank.startswith("@"):  # @node2[,node3]: local rank 0 on those Slurm nodes (ranks map freely)
                node = os.environ.get("SLURMD_NODENAME", "")
                here = node in fault_rank[1:].split(",") and os.environ.get("LOCAL_RANK", "0") == "0"
                fault_rank = str(rank if here else -1)
            if int(fault_rank) == rank and kind in ("hang", "kill", "stop", "wait"):
                self.kind, self.step = kind, int(step)
        except ValueError:
            print(
                f"[mltrain] ignoring malformed MLTRAIN_FAULT={spec!r} (want hang|kill|stop|wait:STEP:RANK)", flush=True
            )

    def maybe_fire(self, step: int) -> None:
        if self.step_s:  # pace the previous step to at least step_s
            time.sleep(max(0.0, self.step_s - (time.monotonic() - self._t_last)))
            self._t_last = time.monotonic()
        if self.kind is None or step != self.step:
            return
        self.marker.parent.mkdir(parents=True, exist_ok=True)
        self.marker.write_text(f"{self.kind} at step {step}\n")
        print(f"[mltrain] injected fault: {self.kind} at step {step} (pid {os.getpid()})", flush=True)
        if self.kind == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if self.kind == "stop":
            os.kill(os.getpid(), signal.SIGUSR1)
            return
        if self.kind == "wait":
            deadline = time.monotonic() + self.WAIT_MAX_S
            while time.monotonic() < deadline and not self._stop_requested():
                time.sleep(0.05)
            return
        while True:  # hang: this rank stops stepping; the others block in the next collective
            time.sleep(3600)

    def _stop_requested(self) -> bool:
        if self.stop is not None:
            return self.stop.requested(check_file=True)
        return (self.marker.parent.parent / rundir.STOP_FILE).exists()
