"""A run's deadline: when its allocation ends, and when to make the last checkpoint before it.

The deadline is the earliest of
- `--deadline T` (`mltrain train` / `mltrain submit`): handed to the trainer as MLTRAIN_DEADLINE (an absolute
  UTC time, so a relative `+2h` means two hours after the command, not after each start) with its source in
  MLTRAIN_DEADLINE_SOURCE (`--deadline`, or `capacity block end` when `mltrain submit` sent it to a capacity-block
  cluster);
- the Slurm job's end time (its time limit), when the trainer runs in a Slurm job: SLURM_JOB_END_TIME where the
  Slurm version sets it, else `squeue -h -j $SLURM_JOB_ID -o %e`, else `scontrol show job` (Slurm 22.05 has no
  SLURM_JOB_END_TIME); unknown (no squeue in the container, an unlimited job) means no such deadline.

The margin is how long before the deadline the last checkpoint must start: the run's measured save time (from
the start of a save to its commit; the largest seen, earlier starts' included) x SAFETY_FACTOR + one step (the
largest of the last STEP_WINDOW) + SLACK_S. Before the first save it is estimated from the state's size: 2 x max(MIN_SAVE_S, bytes per rank /
WRITE_BYTES_PER_S). At each step boundary where now + margin >= deadline the trainer checkpoints (committed) and
exits with the reason `deadline`.
"""

from __future__ import annotations

import math
import os
import re
import subprocess
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mltrain.errors import ConfigError

ENV_DEADLINE = "MLTRAIN_DEADLINE"
ENV_SOURCE = "MLTRAIN_DEADLINE_SOURCE"
SOURCE_FLAG = "--deadline"
SOURCE_BLOCK = "capacity block end"
SOURCE_TIME_LIMIT = "slurm time limit"  # batch_helper.DEADLINE_TIME_LIMIT: such a stop is requeued

SAFETY_FACTOR = 1.5
MIN_SAVE_S = 5.0  # the unmeasured first save: at least this (process-group setup, directories, fsync)
WRITE_BYTES_PER_S = 100e6  # the unmeasured first save: a conservative per-rank write rate
STEP_WINDOW = 8
SLACK_S = 2.0  # the stop itself: the ranks agreeing, the exit records, a loaded machine's jitter
UNLIMITED_S = 365 * 86400  # a Slurm end time further away than this is an unlimited job's placeholder

_RELATIVE = re.compile(r"^\+\s*([0-9]+(?:\.[0-9]+)?)\s*([smhd])$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


class DeadlineError(ConfigError):
    """A `--deadline` (or MLTRAIN_DEADLINE) that is not a time."""


def parse_deadline(text: str, now: float | None = None, what: str = "--deadline") -> float:
    """Epoch seconds of `+90m` / `+2h` / `+1d` / `+30s` (from `now`) or an ISO-8601 time with its zone
    (2026-12-20T11:30Z, 2026-12-20T11:30:00+00:00). A time without a zone is refused: it is ambiguous."""
    now = time.time() if now is None else now
    s = text.strip()
    if (m := _RELATIVE.match(s)) is not None:
        secs = float(m.group(1)) * _UNIT_S[m.group(2)]
        if secs <= 0:
            raise DeadlineError(f"{what} {text!r}: must be in the future")
        return float(math.floor(now + secs))  # whole seconds: the time handed down (ISO) is the same time
    if s.startswith("+"):
        raise DeadlineError(f"{what} {text!r}: a relative deadline is +<number><s|m|h|d>, e.g. +90m")
    iso = s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s
    try:
        t = datetime.fromisoformat(iso)
    except ValueError:
        raise DeadlineError(
            f"{what} {text!r}: not a time; give a UTC time like 2026-12-20T11:30Z or a relative +90m / +2h / +1d"
        ) from None
    if t.tzinfo is None:
        raise DeadlineError(f"{what} {text!r}: no time zone; add Z for UTC (e.g. {s}Z)")
    return t.timestamp()


def format_utc(t: float) -> str:
    """2026-12-20T11:30:00Z."""
    return datetime.fromtimestamp(t, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Deadline:
    at: float  # epoch seconds
    source: str  # SOURCE_FLAG, SOURCE_BLOCK, SOURCE_TIME_LIMIT

    @property
    def iso(self) -> str:
        return format_utc(self.at)

    def left_s(self, now: float | None = None) -> float:
        return self.at - (time.time() if now is None else now)

    def record(self) -> dict[str, Any]:
        """The start record's `deadline` (metrics.jsonl) and control/deadline."""
        return {"at": self.iso, "time": self.at, "source": self.source}

    def env(self) -> dict[str, str]:
        """What hands it to the trainer (torchrun workers, a Slurm job)."""
        return {ENV_DEADLINE: self.iso, ENV_SOURCE: self.source}


def given_deadline(text: str, now: float | None = None) -> Deadline:
    """`--deadline TEXT` of `mltrain train`: a time still in the future."""
    now = time.time() if now is None else now
    at = parse_deadline(text, now)
    if at <= now:
        raise DeadlineError(f"--deadline {text!r}: {format_utc(at)} is in the past")
    return Deadline(at, SOURCE_FLAG)


def env_deadline(environ: Mapping[str, str]) -> Deadline | None:
    """The deadline a launcher handed down (MLTRAIN_DEADLINE, MLTRAIN_DEADLINE_SOURCE)."""
    text = environ.get(ENV_DEADLINE, "").strip()
    if not text:
        return None
    return Deadline(parse_deadline(text, what=ENV_DEADLINE), environ.get(ENV_SOURCE, "").strip() or SOURCE_FLAG)


Runner = Callable[[list[str]], str | None]


def _run(cmd: list[str]) -> str | None:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return p.stdout if p.returncode == 0 else None


def _slurm_time(text: str) -> float | None:
    """Slurm's 2026-12-07T05:00:58 (the host's local time); None for N/A, Unknown, NONE."""
    try:
        return time.mktime(time.strptime(text.strip(), "%Y-%m-%dT%H:%M:%S"))
    except ValueError:
        return None


def slurm_end_time(environ: Mapping[str, str], run: Runner = _run, now: float | None = None) -> float | None:
    """When this Slurm job's time limit ends it (epoch seconds); None outside Slurm or when unknown."""
    job = environ.get("SLURM_JOB_ID", "").strip()
    if not job:
        return None
    now = time.time() if now is None else now
    end: float | None = None
    if (env_end := environ.get("SLURM_JOB_END_TIME", "").strip()).isdigit() and int(env_end) > 0:
        end = float(env_end)
    if end is None and (out := run(["squeue", "-h", "-j", job, "-o", "%e"])) is not None:
        end = _slurm_time(out.strip().splitlines()[0] if out.strip() else "")
    if end is None and (out := run(["scontrol", "-o", "show", "job", job])) is not None:
        m = re.search(r"\bEndTime=(\S+)", out)
        end = _slurm_time(m.group(1)) if m else None
    if end is None or end - now > UNLIMITED_S:
        return None
    return end


def find_deadline(
    environ: Mapping[str, str] = os.environ, slurm_end: Callable[[Mapping[str, str]], float | None] = slurm_end_time
) -> Deadline | None:
    """The earliest of the handed-down deadline and the Slurm job's end; on a tie the handed-down one (it says
    more: a stop before it is not requeued)."""
    found = [d for d in (env_deadline(environ),) if d is not None]
    end = slurm_end(environ)
    if end is not None:
        found.append(Deadline(end, SOURCE_TIME_LIMIT))
    if not found:
        return None
    return min(found, key=lambda d: (d.at, d.source == SOURCE_TIME_LIMIT))


def first_save_estimate(state_bytes_per_rank: float) -> float:
    """The save time assumed before this run has measured one (see the module doc)."""
    return 2.0 * max(MIN_SAVE_S, state_bytes_per_rank / WRITE_BYTES_PER_S)


class Margin:
    """How long before the deadline the last checkpoint must start: save x SAFETY_FACTOR + one step."""

    def __init__(self, first_save_s: float, safety: float = SAFETY_FACTOR) -> None:
        self.first_save_s = first_save_s
        self.safety = safety
        self.saves: list[float] = []
        self.steps: deque[float] = deque(maxlen=STEP_WINDOW)

    def observe_save(self, seconds: float) -> None:
        self.saves.append(max(0.0, seconds))

    def observe_step(self, seconds: float) -> None:
        self.steps.append(max(0.0, seconds))

    @property
    def measured(self) -> bool:
        return bool(self.saves)

    @property
    def save_s(self) -> float:
        return max(self.saves) if self.saves else self.first_save_s

    @property
    def step_s(self) -> float:
        return max(self.steps) if self.steps else 0.0

    def seconds(self) -> float:
        return self.save_s * self.safety + self.step_s + SLACK_S

    def words(self) -> str:
        how = "measured" if self.measured else "estimated"
        return (
            f"margin {self.seconds():.1f} s: save {self.save_s:.1f} s ({how}) x {self.safety:g} "
            f"+ step {self.step_s:.1f} s + {SLACK_S:g} s"
        )


class DeadlineClock:
    """The deadline and its margin as the training loop sees them (rank 0 decides; the loop agrees)."""

    def __init__(self, deadline: Deadline, margin: Margin, clock: Callable[[], float] = time.time) -> None:
        self.deadline = deadline
        self.margin = margin
        self.clock = clock
        self._save_t0: float | None = None

    def save_started(self) -> None:
        self._save_t0 = time.perf_counter()

    def committed(self) -> None:
        """A checkpoint was committed: the time since its save started is a measured save."""
        if self._save_t0 is not None:
            self.margin.observe_save(time.perf_counter() - self._save_t0)
            self._save_t0 = None

    def left_s(self) -> float:
        return self.deadline.left_s(self.clock())

    def due(self) -> bool:
        """Is this step boundary the last one with time to checkpoint before the deadline?"""
        return self.clock() + self.margin.seconds() >= self.deadline.at


DEADLINE_FILE = "control/deadline"  # this start's deadline, for the Slurm batch script's decision


def write_deadline(run_dir: Path, deadline: Deadline | None) -> None:
    """Record this start's deadline in control/deadline (JSON), or remove an earlier start's."""
    import json

    from mltrain.fsutil import atomic_write

    path = run_dir / DEADLINE_FILE
    try:
        if deadline is None:
            path.unlink(missing_ok=True)
        else:
            atomic_write(path, json.dumps(deadline.record()) + "\n")
    except OSError:
        pass  # best effort: without it a deadline stop is not requeued


PREVIOUS_SAVES = 5  # the newest save times of earlier starts that a resumed start begins with
_TAIL_BYTES = 1 << 18


def previous_saves(run_dir: Path) -> list[float]:
    """The newest PREVIOUS_SAVES synchronous save times (`checkpoint` records with save_s) in the run's
    metrics.jsonl (its last 256 KiB): a resumed start's margin is measured from its first step, not estimated."""
    import json

    from mltrain import rundir

    try:
        with open(run_dir / rundir.METRICS_FILE, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - _TAIL_BYTES))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return []
    out: list[float] = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and rec.get("kind") == "checkpoint" and rec.get("ok"):
            save_s = rec.get("save_s")
            if isinstance(save_s, (int, float)) and save_s >= 0:
                out.append(float(save_s))
    return out[-PREVIOUS_SAVES:]
