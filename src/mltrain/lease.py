"""One writer per run dir: a lease that a second `mltrain train` on the same run respects.

Files (in the run dir):
    control/lease.lock   empty; the holder keeps an exclusive fcntl.flock on it for its lifetime
    control/lease.json   who holds it: host, pid, job_id (SLURM_JOB_ID), started, heartbeat, data_dir

A start refuses when the lease is live. Live means (first rule that applies):
  1. the flock is held by another process (flock works on local disks and on most shared filesystems
     mounted with flock support; where it does not, or only per node, rules 3-4 decide);
  2. the holder has the same job id as us: a Slurm requeue of the same job takes the lease over;
  3. the holder is on this host: live while its pid is alive and its heartbeat is fresh;
  4. the holder is on another host: live while its heartbeat is fresh.
Fresh: younger than STALE_FACTOR x the holder's heartbeat interval (HEARTBEAT_S, 30 s; 90 s in all),
so a node that died with the lease frees the run after 90 s, and a requeue of the same job at once.

Who holds it: the process the user started. `mltrain train` on one machine takes it before it
starts torchrun and passes a token to its workers (MLTRAIN_LEASE_TOKEN), so rank 0 knows the lease is
its launcher's; under srun + torchrun (Slurm) rank 0 takes it itself. The heartbeat is a daemon
thread, so a long checkpoint or eval never makes a live run look dead.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from mltrain import rundir
from mltrain.errors import RunDirError
from mltrain.fsutil import atomic_write

LEASE_FILE = "control/lease.json"
LOCK_FILE = "control/lease.lock"
TOKEN_ENV = "MLTRAIN_LEASE_TOKEN"  # set by a launcher that holds the lease for its workers
HEARTBEAT_ENV = "MLTRAIN_LEASE_HEARTBEAT_S"  # override of HEARTBEAT_S (tests)
HEARTBEAT_S = 30.0
STALE_FACTOR = 3.0


class LeaseHeldError(RunDirError):
    """Another live process holds the run dir's lease."""


def _heartbeat_s() -> float:
    try:
        return max(0.05, float(os.environ.get(HEARTBEAT_ENV, HEARTBEAT_S)))
    except ValueError:
        return HEARTBEAT_S


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(run_dir: Path, strict: bool = False) -> dict[str, Any] | None:
    """The lease record, None when there is none. `strict` (taking the lease): a lease.json that is there
    but cannot be read (EIO, ESTALE on a network file system) is not taken for "no lease": it raises."""
    try:
        data = json.loads((run_dir / LEASE_FILE).read_text())
    except FileNotFoundError:
        return None
    except OSError as e:
        if strict:
            raise RunDirError(
                f"{run_dir / LEASE_FILE}: cannot read the run dir lease ({e.strerror or e}); not starting while "
                "another trainer may hold it"
            ) from None
        return None
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def _fresh(info: dict[str, Any], now: float) -> bool:
    interval = float(info.get("heartbeat_interval_s") or HEARTBEAT_S)
    return now - float(info.get("heartbeat") or 0) < STALE_FACTOR * interval


def _alive(info: dict[str, Any], now: float | None = None) -> bool:
    """Rules 3-4 of the module docstring (flock and job id are checked by the caller)."""
    now = time.time() if now is None else now
    if info.get("host") == socket.gethostname():
        pid = int(info.get("pid") or 0)
        return pid > 0 and _pid_alive(pid) and _fresh(info, now)
    return _fresh(info, now)


def _try_flock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this filesystem has no flock."""
    import fcntl

    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return False
        if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return None
        raise


def describe(info: dict[str, Any]) -> str:
    """'host h1 pid 123 job 77 since 2026-01-01 10:00:00 UTC' (job only when there is one)."""
    since = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(float(info.get("started") or 0)))
    job = f" job {info['job_id']}" if info.get("job_id") else ""
    return f"host {info.get('host', '?')} pid {info.get('pid', '?')}{job} since {since}"


def lease_holder(run_dir: str | os.PathLike[str]) -> dict[str, Any] | None:
    """The live holder's lease.json (host, pid, job_id, started, heartbeat, data_dir), or None."""
    run_dir = Path(run_dir)
    info = _read(run_dir)
    lock = run_dir / LOCK_FILE
    if lock.exists():
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            fd = -1
        if fd >= 0:
            try:
                held = _try_flock(fd) is False
            finally:
                os.close(fd)  # closing drops a probe lock we may have taken
            if held:
                return info or {"host": "?", "pid": "?", "started": 0}
    return info if info is not None and _alive(info) else None


class Lease:
    """A held lease. `release()` at exit (also safe to call twice); a daemon thread heartbeats."""

    def __init__(self, run_dir: Path, fd: int | None, info: dict[str, Any]) -> None:
        self.run_dir = run_dir
        self.info = info
        self.token: str = info["token"]
        self._fd = fd
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._released = False
        self._thread = threading.Thread(target=self._beat_loop, name="mltrain-lease", daemon=True)
        self._thread.start()

    def heartbeat(self) -> None:
        """Refresh the heartbeat time (the thread does this every heartbeat_interval_s)."""
        with self._lock:
            if self._released:
                return
            current = _read(self.run_dir)
            if current is not None and current.get("token") != self.token:
                return  # taken over (we looked dead): never write over the new holder
            self.info["heartbeat"] = time.time()
            with contextlib.suppress(OSError):
                atomic_write(self.run_dir / LEASE_FILE, json.dumps(self.info) + "\n", fsync=False)

    def _beat_loop(self) -> None:
        while not self._stop.wait(float(self.info["heartbeat_interval_s"])):
            self.heartbeat()

    def release(self) -> None:
        with self._lock:
            if self._released:
                return
            self._released = True
            self._stop.set()
            current = _read(self.run_dir)
            if current is not None and current.get("token") == self.token:
                with contextlib.suppress(OSError):
                    (self.run_dir / LEASE_FILE).unlink()
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._fd)  # drops the flock
                self._fd = None


def acquire_lease(
    run_dir: str | os.PathLike[str],
    *,
    job_id: str | None = None,
    data_dir: str | os.PathLike[str] | None = None,
    say: Any = None,
) -> Lease:
    """Take the run dir's lease or raise LeaseHeldError naming the holder (one line).

    `job_id` (SLURM_JOB_ID): a holder with the same job id is a previous attempt of this job and is
    taken over. `data_dir` is recorded so `data prepare` can refuse to rewrite data a run is reading.
    `say(msg)` reports a take-over.
    """
    run_dir = Path(run_dir)
    try:
        (run_dir / rundir.CONTROL_DIR).mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as e:
        raise RunDirError(f"{run_dir / LOCK_FILE}: cannot create the run dir lease: {e.strerror or e}") from None
    try:
        locked = _try_flock(fd)
        old = _read(run_dir, strict=True)
        same_job = bool(job_id) and old is not None and str(old.get("job_id")) == str(job_id)
        if not same_job:
            if locked is False:  # rule 1
                raise LeaseHeldError(_held_message(run_dir, old))
            # Our flock proves nothing about a holder on another node (per-node flock) or without flock.
            if old is not None and (locked is None or old.get("host") != socket.gethostname()) and _alive(old):
                raise LeaseHeldError(_held_message(run_dir, old))
        if old is not None and say is not None:
            why = "same job id, a requeue" if same_job else "its holder is gone"
            say(f"taking over the run dir lease of {describe(old)} ({why})")
        now = time.time()
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "job_id": job_id,
            "started": now,
            "heartbeat": now,
            "heartbeat_interval_s": _heartbeat_s(),
            "data_dir": str(Path(data_dir).resolve()) if data_dir else None,
            "token": uuid.uuid4().hex,
        }
        try:
            atomic_write(run_dir / LEASE_FILE, json.dumps(info) + "\n")
        except OSError as e:
            raise RunDirError(f"{run_dir / LEASE_FILE}: cannot write the run dir lease: {e.strerror or e}") from None
    except BaseException:
        os.close(fd)
        raise
    return Lease(run_dir, fd if locked else (os.close(fd) or None), info)


def _held_message(run_dir: Path, info: dict[str, Any] | None) -> str:
    who = describe(info) if info else "another process (its lease.json is unreadable)"
    return (
        f"run dir {run_dir} is in use by {who}; one writer per run: wait for it, stop it with "
        f"`mltrain stop {run_dir}`, or pick another run name"
    )


def inherited(run_dir: str | os.PathLike[str]) -> bool:
    """True when our launcher holds this run dir's lease for us (its token is in our environment)."""
    token = os.environ.get(TOKEN_ENV)
    info = _read(Path(run_dir))
    return bool(token) and info is not None and info.get("token") == token


def live_users_of_data(data_dir: str | os.PathLike[str], base_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Live leases under `<base_dir>/runs/*` whose run reads `data_dir` (each with its 'run_dir')."""
    target = str(Path(data_dir).resolve())
    out = []
    for lease_file in sorted((Path(base_dir) / rundir.RUNS_DIR).glob(f"*/{LEASE_FILE}")):
        run = lease_file.parent.parent
        holder = lease_holder(run)
        if holder is not None and holder.get("data_dir") == target:
            out.append({**holder, "run_dir": str(run)})
    return out
