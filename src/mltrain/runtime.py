"""A small API for the user's own training script run by mltrain (`script:` in the run config).

    from mltrain import runtime
    runtime.install_stop_handler()            # SIGUSR1/SIGTERM -> stop_requested() becomes True
    ckpt = runtime.latest_checkpoint(runtime.checkpoint_dir())   # None on the first start
    ...
    runtime.log(step, loss=..., tokens_per_s=..., step_time_s=...)  # -> <run>/metrics.jsonl
    if runtime.stop_requested():
        save(); runtime.exit_for_requeue()    # exit 75: the launcher restarts / requeues the run

The launcher passes the run dir in MLTRAIN_RUN_DIR (launch/script.py). Outside mltrain (no such variable)
every call still works: the run dir is ./runs/<script name>. No torch import here: the module loads in
milliseconds and works in any script (torch, JAX, DeepSpeed, anything).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

from mltrain import checkpoint_rule, exit_codes, rundir
from mltrain.checkpoint_rule import checkpoint_step as checkpoint_step  # the scripts' checkpoint rule, re-exported
from mltrain.checkpoint_rule import is_complete_checkpoint as is_complete_checkpoint
from mltrain.fsutil import atomic_write

ENV_RUN_DIR = "MLTRAIN_RUN_DIR"
ENV_RUN_NAME = "MLTRAIN_RUN_NAME"
ENV_CHECKPOINT_DIR = "MLTRAIN_CHECKPOINT_DIR"
ENV_RESUME_FROM = "MLTRAIN_RESUME_FROM"  # newest complete checkpoint when the launcher started the script
STOP_SIGNALS = ("SIGUSR1", "SIGTERM")
CHECKPOINT_COMPLETE = checkpoint_rule.SCRIPT_MARKER  # written into a checkpoint dir once it is whole (hf_trainer)

_signalled: str | None = None
_lock = threading.Lock()


def run_dir() -> Path:
    """The run directory `<base>/runs/<name>/` (created if missing)."""
    env = os.environ.get(ENV_RUN_DIR)
    if env:
        p = Path(env)
    else:
        p = rundir.run_path(rundir.default_base(), Path(sys.argv[0] or "script").stem or "script")
    p.mkdir(parents=True, exist_ok=True)
    return p


def checkpoint_dir() -> Path:
    """Where the script should save checkpoints (the run config's `script.checkpoint_dir`)."""
    env = os.environ.get(ENV_CHECKPOINT_DIR)
    return Path(env) if env else run_dir() / rundir.CHECKPOINTS_DIR


def rank() -> int:
    return int(os.environ.get("RANK", "0") or 0)


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def is_main() -> bool:
    """Rank 0 writes the run's files (metrics, exit reason); every rank may ask for a stop."""
    return rank() == 0


# --------------------------------------------------------------------------- stop requests


def _on_signal(signum: int, _frame: Any) -> None:
    global _signalled
    _signalled = signal.Signals(signum).name


def install_stop_handler(signals: tuple[str, ...] = STOP_SIGNALS) -> None:
    """Turn SIGUSR1/SIGTERM (Slurm's warning before preemption or the time limit, torchrun forwarding a
    stop) into a flag instead of death, so the script can checkpoint first. Call once, early."""
    for name in signals:
        sig = getattr(signal, name, None)
        if sig is not None:
            signal.signal(sig, _on_signal)


def stop_file() -> Path:
    """The stop-request file the built-in trainer watches too (rundir.STOP_FILE; `mltrain stop`)."""
    return run_dir() / rundir.STOP_FILE


def stop_signal() -> str | None:
    """The name of the stop signal received, if any."""
    return _signalled


def stop_requested() -> bool:
    """True once a stop signal arrived in this process or the run's control/stop file exists.

    Under torchrun only some ranks may see the request: scripts that use torch.distributed should
    agree across ranks (the HF callback does an all-reduce; see integrations.hf_trainer)."""
    return _signalled is not None or stop_file().exists()


def clear_stop_request() -> None:
    """Remove the stop file after a stop has been honoured (so the next start is not stopped at once)."""
    global _signalled
    with _lock:
        _signalled = None
        try:
            stop_file().unlink()
        except FileNotFoundError:
            pass


def write_exit_reason(reason: str, message: str | None = None) -> None:
    """Rank 0 records why the script ends (exit_codes.REASON_*), read by the launcher and `status`."""
    if not is_main():
        return
    d = run_dir()
    (d / rundir.CONTROL_DIR).mkdir(parents=True, exist_ok=True)
    atomic_write(d / rundir.EXIT_REASON_FILE, reason + "\n")
    if message:
        atomic_write(d / rundir.EXIT_MESSAGE_FILE, message.splitlines()[0] + "\n")


def exit_for_requeue() -> NoReturn:
    """Leave with exit code 75 after the checkpoint is saved: the launcher restarts the run (Slurm: requeue).

    Rank 0 removes the stop file so the next start is not stopped at once, except in a multi-rank run under
    an mltrain launcher: there the other ranks may not have seen the file yet (a script that does not agree
    across ranks would then run on to its end), and the launcher removes it once every rank has left."""
    if is_main() and not (_world_size() > 1 and os.environ.get(ENV_RUN_DIR)):
        clear_stop_request()
    write_exit_reason(exit_codes.REASON_PREEMPTED)
    sys.stdout.flush()
    sys.stderr.flush()
    raise SystemExit(exit_codes.REQUEUE)


# --------------------------------------------------------------------------- checkpoints


def latest_checkpoint(directory: str | os.PathLike[str] | None = None) -> str | None:
    """The newest complete checkpoint under `directory` (default checkpoint_dir()), as a path string for
    `resume_from_checkpoint=`; None when there is none. Incomplete ones (killed mid-save) are skipped
    (checkpoint_rule.is_complete_checkpoint, also exported here with checkpoint_step)."""
    return checkpoint_rule.latest_checkpoint(directory if directory is not None else checkpoint_dir())


# --------------------------------------------------------------------------- metrics


def _finite(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN is not JSON
        return None
    return v


def write_record(kind: str, step: int | None, **fields: Any) -> None:
    """Append one record to <run>/metrics.jsonl in the trainer's format: {"time", "kind", "step", ...}.
    Rank 0 only; one line per write (append + flush), so a killed writer leaves at most a torn last line,
    which readers ignore."""
    if not is_main():
        return
    rec: dict[str, Any] = {"time": round(time.time(), 3), "kind": kind, "step": step}
    rec.update({k: _finite(v) for k, v in fields.items()})
    line = json.dumps(rec, default=str) + "\n"
    with _lock, open(run_dir() / rundir.METRICS_FILE, "a") as fh:
        fh.write(line)
        fh.flush()


def log(step: int, **metrics: Any) -> None:
    """A training record: loss, tokens_per_s, step_time_s (seconds per step over the logged window),
    lr, grad_norm... `status`, goodput and `report` read loss, tokens_per_s and step_time_s."""
    write_record("train", step, **metrics)


def log_eval(step: int, **metrics: Any) -> None:
    """An eval record (val_loss, val_ppl, ...)."""
    write_record("eval", step, **metrics)


def log_start(step: int = 0, **fields: Any) -> None:
    """Mark a (re)start: goodput counts from here; `status` counts starts after the first as restarts."""
    fields.setdefault("world_size", _world_size())
    fields.setdefault("restart_count", int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0))
    fields.setdefault("job_id", os.environ.get("SLURM_JOB_ID"))
    write_record("start", step, **fields)


def log_exit(step: int | None, reason: str) -> None:
    """Mark the end of this start (reason: exit_codes.REASON_*)."""
    write_record("exit", step, reason=reason)
