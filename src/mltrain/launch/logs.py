"""`mltrain logs RUN [-f]`: the newest log of a run, local or Slurm.

Local runs write `runs/<name>/logs/local-<YYYYmmdd-HHMMSS>.log` (every rank's stdout+stderr); a Slurm
job writes `slurm/<job>.out` and `slurm/<job>.err`. Whichever was written last is shown. A Slurm job's
two streams are shown as one, interleaved by time: a line's time is the last timestamp seen in its own
file (the batch script stamps its lines), and with -f lines are printed as they arrive; stderr lines
are marked `[err]`.
"""

from __future__ import annotations

import heapq
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape

from mltrain.errors import RunDirError

LOGS_DIR = "logs"
LOCAL_LOG_GLOB = "local-*.log"
ERR_MARK = "[err] "
POLL_S = 0.2
SCHEDULER_CHECK_S = 5.0
_STAMP = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}:\d{2})")


@dataclass
class LogSource:
    """What `logs` shows: a local log file, or a Slurm job's stdout and stderr."""

    kind: str  # "local" | "slurm"
    files: list[Path]
    job_id: str | None = None

    @property
    def mtime(self) -> float:
        return max((f.stat().st_mtime for f in self.files if f.exists()), default=0.0)


def newest_local_log(run_dir: Path) -> Path | None:
    logs = sorted((run_dir / LOGS_DIR).glob(LOCAL_LOG_GLOB), key=lambda p: (p.stat().st_mtime, p.name))
    return logs[-1] if logs else None


def pick_source(run_dir: Path) -> LogSource:
    """The newest of the local log and the latest Slurm job's logs."""
    from mltrain.launch.slurm import latest_job_id, log_files

    cands: list[LogSource] = []
    local = newest_local_log(run_dir)
    if local is not None:
        cands.append(LogSource("local", [local]))
    job = latest_job_id(run_dir)
    if job is not None:
        cands.append(LogSource("slurm", log_files(run_dir, job), job_id=job))
    if not cands:
        raise RunDirError(
            f"{run_dir}: no logs yet (no {LOGS_DIR}/{LOCAL_LOG_GLOB} and no Slurm job in slurm/jobs.jsonl)"
        )
    return max(cands, key=lambda c: c.mtime)


def _stamp_key(line: str, last: str) -> str:
    m = _STAMP.search(line)
    return f"{m.group(1)}T{m.group(2)}" if m else last


def interleave(streams: Iterable[tuple[str, list[str]]], start_keys: list[str] | None = None) -> list[tuple[str, str]]:
    """Merge (prefix, lines) streams by time: each line keyed by the last timestamp in its own stream
    (lines before the first timestamp sort first, or by `start_keys[i]`: the stream's last timestamp
    from an earlier read); ties keep stream order (stdout before stderr)."""
    keyed = []
    for order, (prefix, lines) in enumerate(streams):
        last = start_keys[order] if start_keys else ""
        seq = []
        for i, line in enumerate(lines):
            last = _stamp_key(line, last)
            seq.append((last, order, i, prefix, line))
        keyed.append(seq)
    return [(p, line) for _k, _o, _i, p, line in heapq.merge(*keyed)]


class _Tail:
    """New whole lines of a file since the last read (a partial last line waits for its newline)."""

    def __init__(self, path: Path) -> None:
        self.path, self.offset = path, 0
        self.last_key = ""  # the last timestamp seen in this file (orders lines of later reads)

    def read(self, whole_lines: bool = True) -> list[str]:
        try:
            with open(self.path, "rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            return []
        cut = data.rfind(b"\n") + 1 if whole_lines else len(data)
        self.offset += cut
        return data[:cut].decode(errors="replace").splitlines()


def _emit(console: Console, prefix: str, line: str) -> None:
    if prefix:
        console.print(f"[dim]{escape(prefix)}[/]{escape(line)}", highlight=False, soft_wrap=True)
    else:
        console.out(line, highlight=False)


def _drain(console: Console, tails: list[tuple[str, _Tail]], whole_lines: bool) -> bool:
    chunks = [(prefix, t.read(whole_lines)) for prefix, t in tails]
    merged = interleave(chunks, [t.last_key for _p, t in tails])
    for (_p, lines), (_q, t) in zip(chunks, tails, strict=True):
        for line in lines:
            t.last_key = _stamp_key(line, t.last_key)
    for prefix, line in merged:
        _emit(console, prefix, line)
    return bool(merged)


def _local_live(run_dir: Path) -> bool:
    try:
        from mltrain.lease import lease_holder
    except ImportError:  # no lease module: follow until the trainer writes its exit record
        from mltrain import rundir
        from mltrain.fsutil import read_jsonl

        recs = read_jsonl(run_dir / rundir.METRICS_FILE)
        return bool(recs) and recs[-1].get("kind") != "exit"
    try:
        return lease_holder(run_dir) is not None
    except Exception:
        return False


def _slurm_active(job_id: str) -> bool:
    from mltrain.launch.slurm import ACTIVE_STATES, SlurmUnreachable, query_job

    try:
        info = query_job(job_id)
    except SlurmUnreachable:
        return True  # not known to be gone: keep following
    return info is not None and info["state"] in ACTIVE_STATES


def follow(
    console: Console,
    tails: list[tuple[str, _Tail]],
    still_running: Callable[[], bool],
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Print new lines as they arrive until the writer is gone and the files stop growing."""
    last_check = 0.0
    while True:
        if _drain(console, tails, whole_lines=True):
            continue
        now = time.monotonic()
        if now - last_check >= SCHEDULER_CHECK_S or last_check == 0.0:
            last_check = now
            if not still_running():
                _drain(console, tails, whole_lines=False)
                return
        sleep(POLL_S)


def show_logs(run: str, follow_: bool = False, console: Console | None = None) -> LogSource:
    """`mltrain logs RUN [-f]`."""
    from mltrain.launch.slurm import find_run

    console = console or Console()
    run_dir = find_run(run)
    src = pick_source(run_dir)
    if src.kind == "local":
        tails = [("", _Tail(src.files[0]))]
        alive: Callable[[], bool] = lambda: _local_live(run_dir)  # noqa: E731
        console.print(f"[dim]== {escape(str(src.files[0]))}[/]", highlight=False, soft_wrap=True)
    else:
        out, err = src.files
        tails = [("", _Tail(out)), (ERR_MARK, _Tail(err))]
        job = src.job_id or ""
        alive = lambda: _slurm_active(job)  # noqa: E731
        if not any(f.exists() for f in src.files):
            console.print(f"(job {job} has not written a log yet: {out})", highlight=False)
            if not follow_:
                return src
    if follow_:
        follow(console, tails, alive)
    else:
        _drain(console, tails, whole_lines=False)
    return src
