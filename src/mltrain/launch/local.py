"""`mltrain train` on one machine: run the trainer in this process, or start torchrun for N processes.

Under torchrun (or srun + torchrun on Slurm) each worker re-enters here with RANK/WORLD_SIZE set
and runs the trainer directly. On one machine this launcher holds the run dir's lease (mltrain.lease)
for its workers, writes `<run>/logs/local-<time>.log` and turns Ctrl-C into a stop request.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, NoReturn

from mltrain import exit_codes, rundir
from mltrain.config import check_nproc, load_run_config
from mltrain.errors import MltrainError
from mltrain.startup import heavy_imports
from mltrain.train.faults import remove_stale_stop, write_exit_reason, write_stop_request

LOGS_DIR = "logs"  # <run>/logs/local-<YYYYmmdd-HHMMSS>.log: every local start's console output


def standalone_torchrun(nproc: int) -> list[str]:
    """torchrun on this machine alone (its own rendezvous), from this interpreter: the prefix every local
    multi-process launch uses (training, users' scripts, the collective bench). launch/torchrun.py is
    torchrun's own main, started without the GC's scans of torch's import."""
    return [sys.executable, "-m", "mltrain.launch.torchrun", "--standalone", f"--nproc-per-node={nproc}"]


def torchrun_command(run_yaml: Path, overrides: list[str], nproc: int) -> list[str]:
    """The exact torchrun invocation for a single-node multi-process run."""
    cmd = [*standalone_torchrun(nproc), "-m", "mltrain", "train", str(run_yaml)]
    for o in overrides:
        cmd += ["--set", o]
    return cmd


def _fit_to_gpus(nproc: int, device: str) -> int:
    """One process per GPU: on a machine with fewer GPUs than --nproc, use the GPUs there are."""
    from mltrain.devices import no_gpu_here

    if device == "cpu" or nproc <= 1 or no_gpu_here():
        return nproc
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if 0 < gpus < nproc:
        print(f"[mltrain] --nproc {nproc} but {gpus} GPU(s) here: running {gpus} process(es)", flush=True)
        return gpus
    return nproc


def train_local(run_yaml: Path, overrides: list[str], nproc: int = 1) -> int:
    """Train on this machine. Returns the exit code (exit_codes: 0 done, 75 stopped for requeue).

    This process (not a torchrun worker) checks the run, takes the run dir's lease, clears a stale stop
    request and tees all output into `<run>/logs/local-<time>.log`; then it trains in-process (one
    process) or starts torchrun and turns Ctrl-C into a stop request for the workers.
    """
    cfg = load_run_config(run_yaml, overrides)
    if "LOCAL_RANK" in os.environ:  # a torchrun worker (started here or by srun on a cluster)
        with heavy_imports():
            from mltrain.train.trainer import run_training

        return _exit_worker(lambda: run_training(cfg))
    check_nproc(cfg, nproc, run_yaml)
    started = time.time()
    nproc = _fit_to_gpus(nproc, cfg.train.device)
    from mltrain import lease
    from mltrain.train.start_checks import precheck

    precheck(cfg)  # fail once, with one line, before anything is written or N workers start
    held = lease.acquire_lease(cfg.run_dir, job_id=os.environ.get("SLURM_JOB_ID"), data_dir=cfg.data.dir, say=_say)
    os.environ[lease.TOKEN_ENV] = held.token  # our workers (and run_training below) use this lease
    try:
        with run_log(cfg.run_dir) as tee:
            stale = remove_stale_stop(cfg.run_dir, started)
            if stale is not None:
                when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stale))
                _say(f"removed a stale stop request ({rundir.STOP_FILE} from {when}, before this start)")
            try:
                if nproc > 1:
                    return _run_torchrun(cfg, run_yaml, overrides, nproc, started, tee)
                with heavy_imports():
                    from mltrain.train.trainer import run_training

                return run_training(cfg)
            except MltrainError as e:
                tee.log_only(f"error: {e}\n")
                raise
    finally:
        os.environ.pop(lease.TOKEN_ENV, None)
        held.release()


def stop_run(ref: str, console: Any = None) -> Path:
    """`mltrain stop RUN`: write control/stop for the run's live trainer (the lease holder)."""
    from mltrain.errors import RunDirError
    from mltrain.lease import describe, lease_holder

    try:
        run_dir = rundir.resolve_run(ref)
    except RunDirError:  # a run in its first seconds has a lease but no config.yaml yet
        run_dir = (
            Path(ref) if (Path(ref) / rundir.CONTROL_DIR).is_dir() else rundir.run_path(rundir.default_base(), ref)
        )
        if lease_holder(run_dir) is None:
            raise
    holder = lease_holder(run_dir)
    if holder is None:
        raise RunDirError(f"run {ref}: no trainer is running on {run_dir} (no live lease); nothing to stop")
    path = write_stop_request(run_dir, "mltrain stop")
    msg = (
        f"stop requested ({path}): the trainer ({describe(holder)}) checkpoints at its next step boundary "
        "and exits 75; `mltrain train` resumes it"
    )
    if console is not None:
        console.print(msg, highlight=False, markup=False)
    return path


def _say(msg: str) -> None:
    print(f"[mltrain] {msg}", flush=True)


def _run_torchrun(cfg: Any, run_yaml: Path, overrides: list[str], nproc: int, started: float, tee: _Tee) -> int:
    """torchrun for the built-in trainer under `supervise` (Ctrl-C = checkpoint and exit 75; twice = abort)."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    rc, aborted = supervise(torchrun_command(run_yaml, overrides, nproc), env, cfg.run_dir, tee)
    if aborted:
        write_exit_reason(cfg.run_dir, exit_codes.REASON_INTERRUPTED)
        print(ABORTED_LINE, file=sys.stderr, flush=True)
        return exit_codes.INTERRUPTED
    reason = rundir.exit_reason_since(cfg.run_dir, started)
    if reason == exit_codes.REASON_PREEMPTED:
        with contextlib.suppress(OSError):  # consumed (rank 0 removes it too; a race may leave ours)
            (cfg.run_dir / rundir.STOP_FILE).unlink()
        return exit_codes.REQUEUE
    if reason == exit_codes.REASON_DEADLINE:  # checkpointed before the deadline: resumable, like a stop
        return exit_codes.REQUEUE
    if reason == exit_codes.REASON_DONE and rc == 0:
        return exit_codes.DONE
    if reason == exit_codes.REASON_CONFIG_ERROR:
        return exit_codes.CONFIG_ERROR
    return rc or 1


ABORTED_LINE = (
    "aborted: second Ctrl-C, workers killed, not checkpointed (the next start resumes from the newest checkpoint)"
)


def supervise(
    cmd: list[str], env: dict[str, str], run_dir: Path, tee: _Tee, cwd: Path | None = None
) -> tuple[int, bool]:
    """Run torchrun in its own session, its output teed into the run's log, so a terminal's Ctrl-C reaches
    only us: the first Ctrl-C (or SIGTERM/SIGUSR1) becomes a stop request (control/stop: the workers
    checkpoint at the next step boundary and exit 75), a second Ctrl-C kills the workers at once.
    torchrun's own SIGINT handling (tear down every worker with a traceback) never runs.
    Returns (torchrun's exit code, aborted by a second Ctrl-C)."""
    proc = subprocess.Popen(
        cmd,
        env=env,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=_die_with_parent(),
    )
    pumps = [tee.pump(proc.stdout, sys.stdout), tee.pump(proc.stderr, sys.stderr)]
    state = {"interrupts": 0, "aborted": False}

    def on_signal(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if name == "SIGINT":
            state["interrupts"] += 1
        if name == "SIGINT" and state["interrupts"] >= 2:
            if not state["aborted"]:
                state["aborted"] = True
                _kill_tree(proc.pid)
            return
        if not (run_dir / rundir.STOP_FILE).exists():
            write_stop_request(run_dir, name)
            what = "Ctrl-C" if name == "SIGINT" else name
            _say(f"{what}: checkpointing at the next step boundary, then exiting (Ctrl-C again aborts)")

    old = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    try:
        rc = proc.wait()
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        for t in pumps:
            t.join(timeout=10)
    return rc, state["aborted"]


def _die_with_parent() -> Callable[[], None] | None:
    """Linux: torchrun gets SIGTERM if this launcher dies (it would outlive us in its own session)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    pr_set_pdeathsig = 1
    return lambda: libc.prctl(pr_set_pdeathsig, signal.SIGTERM)


def _kill_tree(pid: int) -> None:
    """SIGKILL torchrun and its workers (each worker runs in its own session, so no killpg reaches all)."""
    victims = [pid, *_descendants(pid)]
    for p in victims:
        with contextlib.suppress(OSError):
            os.kill(p, signal.SIGKILL)


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def run_log(run_dir: Path) -> _Tee:
    """The tee of this start's output into `<run>/logs/local-<time>.log` (use as a context manager)."""
    return _Tee(run_dir / LOGS_DIR / f"local-{time.strftime('%Y%m%d-%H%M%S')}.log")


class _Tee:
    """Copies this process's stdout/stderr (and a child's pipes) into one line-buffered log file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fh: Any = None
        self._saved: tuple[Any, Any] | None = None

    def __enter__(self) -> _Tee:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a", buffering=1, encoding="utf-8", errors="replace")  # noqa: SIM115
        self._saved = (sys.stdout, sys.stderr)
        sys.stdout = _TeeStream(sys.stdout, self)  # type: ignore[assignment]
        sys.stderr = _TeeStream(sys.stderr, self)  # type: ignore[assignment]
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._saved is not None
        sys.stdout.flush()
        sys.stderr.flush()
        sys.stdout, sys.stderr = self._saved
        with self._lock, contextlib.suppress(OSError):
            self._fh.close()

    def log_only(self, text: str) -> None:
        """Append to the log; a failing log (disk full) is dropped with one line, never stops training."""
        failed = None
        with self._lock:
            if self._fh is None or self._fh.closed:
                return
            try:
                self._fh.write(text)
            except OSError as e:
                failed = e
                with contextlib.suppress(OSError):
                    self._fh.close()
        if failed is not None and self._saved is not None:
            with contextlib.suppress(OSError, ValueError):
                self._saved[1].write(f"[mltrain] log file {self.path}: {failed}; console only from here\n")

    def pump(self, pipe: IO[bytes] | None, console: IO[str]) -> threading.Thread:
        """A thread copying a child's pipe, line by line, to the console stream and the log."""

        def run() -> None:
            assert pipe is not None
            for raw in iter(pipe.readline, b""):
                line = raw.decode("utf-8", errors="replace")
                with contextlib.suppress(OSError, ValueError):
                    console.write(line)
                    console.flush()
            pipe.close()

        t = threading.Thread(target=run, name="mltrain-tee", daemon=True)
        t.start()
        return t


class _TeeStream:
    """A text stream writing to the original console stream and the run's log file."""

    def __init__(self, console: IO[str], tee: _Tee) -> None:
        self._console = console
        self._tee = tee

    def write(self, text: str) -> int:
        self._tee.log_only(text)
        return self._console.write(text)

    def flush(self) -> None:
        self._console.flush()

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, encoding, ... of the console
        return getattr(self._console, name)


def _exit_worker(train: Callable[[], int]) -> NoReturn:
    """Run a torchrun worker and leave with os._exit: interpreter teardown of DDP/gloo objects can
    deadlock (see trainer._KEEPALIVE), and every file the trainer writes is closed by now."""
    code = 1
    try:
        code = train()
        if code == exit_codes.REQUEUE:
            # torchrun prints a ChildFailedError traceback for any non-zero worker and collapses codes to 1
            # anyway; control/exit_reason ("preempted") carries the outcome to the launcher / batch script.
            code = 0
    except MltrainError as e:
        print(f"error: {e}", file=sys.stderr)
        code = e.exit_code
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
