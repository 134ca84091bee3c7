"""One definition of the figures `status`, `report` and the trainer console show about a run.

restarts   the lines of restarts.jsonl whose action is "requeue" or "restart_in_place" (the launcher's
           decisions, which agree with Slurm's Restarts count); a run without a launcher record
           (local runs) counts each trainer start after the first.
goodput    productive step time / allocated time of the run's own allocations:
           productive = sum over logged steps that survived (steps redone after a resume from an
                        older checkpoint are not counted) of step_time_s x steps in that log window
                        (eval, checkpoint, start-up and compile-warm-up time outside the timed windows
                        are not productive);
           allocated  = for each Slurm allocation in slurm/allocations.jsonl, from its "start" to its
                        "end" event; an allocation without an end event ends at `now` while its job is
                        running, else at the last metrics record it wrote (so a run that died without
                        an exit event does not keep falling); for each trainer start not under Slurm
                        (local runs), from its "start" record to its "exit" record or last record.
           Time pending in the queue, between a cancel and a resubmit, or between two manual local
           runs is not allocated time.
steps      the step the run has reached: the newest step of its latest attempt (its "start" record's
           step, then each "train" and "exit" record after it); an attempt that resumed from an older
           checkpoint rewinds it. A stop between two logged steps (a preemption at 317 with log_every 10)
           counts: the "exit" record says 317 while the last "train" record says 310.
surviving  the train records of the run's final history: records of an earlier attempt past the step a
           later attempt resumed from were redone and are dropped.
loss       the last train loss = mean over the last SMOOTH_STEPS surviving logged records (one record is
           itself a mean over train.log_every steps); the first = the same over the first records. Status,
           report and the trainer's end-of-run line all show this one figure.
ETA        only while the run is running: remaining steps x mean step_time_s of the last
           SMOOTH_STEPS logged windows of the current attempt; dead, failed, cancelled or finished
           runs have none.
tok/s, MFU  means over the last SMOOTH_STEPS surviving logged records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mltrain import rundir
from mltrain.checkpoint_rule import remote_commit
from mltrain.fsutil import read_jsonl

SMOOTH_STEPS = 10  # logged records averaged for loss, tokens/s and step time
RESTART_ACTIONS = ("requeue", "restart_in_place")
PREEMPT_CAUSES = ("preempted", "time_limit")
ALLOCATIONS_FILE = "slurm/allocations.jsonl"


@dataclass
class Allocation:
    """A span of time the run held machines (one Slurm allocation, or one local trainer start)."""

    start: float
    end: float | None
    job_id: str | None = None
    nodes: list[str] = field(default_factory=list)
    time_limit_s: float | None = None


def count_restarts(restarts: list[dict[str, Any]]) -> int:
    """Restarts = launcher decisions that started the run again (the definition in the module docstring)."""
    return sum(1 for r in restarts if r.get("action") in RESTART_ACTIONS)


def count_preemptions(restarts: list[dict[str, Any]]) -> int:
    """Of those restarts, the ones caused by preemption or a time limit (not failures)."""
    return sum(1 for r in restarts if r.get("action") in RESTART_ACTIONS and r.get("cause") in PREEMPT_CAUSES)


def restarts_of(metrics: list[dict[str, Any]], restarts: list[dict[str, Any]]) -> int:
    """The restart count shown everywhere: launcher records when there are any, else trainer starts - 1."""
    if restarts:
        return count_restarts(restarts)
    return max(0, sum(1 for r in metrics if r.get("kind") == "start") - 1)


def _num(x: Any) -> float | None:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def read_allocations(run_dir: Path) -> list[Allocation]:
    """Slurm allocations from slurm/allocations.jsonl: each "start" paired with the next "end" of its job."""
    out: list[Allocation] = []
    open_by_job: dict[str, Allocation] = {}
    for rec in read_jsonl(run_dir / ALLOCATIONS_FILE):
        t, job = _num(rec.get("time")), str(rec.get("job_id") or "")
        if t is None:
            continue
        if rec.get("event") == "start":
            open_by_job.pop(job, None)  # a start without an end before it: that allocation died (end unknown)
            nodes = rec.get("nodes") or []
            a = Allocation(
                start=t,
                end=None,
                job_id=job or None,
                nodes=[str(n) for n in nodes] if isinstance(nodes, list) else [str(nodes)],
                time_limit_s=_num(rec.get("time_limit_s")),
            )
            out.append(a)
            open_by_job[job] = a
        elif rec.get("event") == "end" and job in open_by_job:
            open_by_job.pop(job).end = t
    return out


def _record_times(metrics: list[dict[str, Any]]) -> list[float]:
    return [t for t in (_num(r.get("time")) for r in metrics) if t is not None]


def local_allocations(
    metrics: list[dict[str, Any]], live: bool = False, now: float | None = None, slurm_too: bool = False
) -> list[Allocation]:
    """Trainer starts not under Slurm: from each "start" record to its "exit" record or last record.

    `live`: the last start is still training (e.g. it holds the run-dir lease), so it ends at `now`.
    `slurm_too`: count starts under Slurm as well (a run dir without slurm/allocations.jsonl).
    """
    out: list[Allocation] = []
    cur: Allocation | None = None
    for rec in metrics:
        t = _num(rec.get("time"))
        if t is None:
            continue
        kind = rec.get("kind")
        if kind == "start":
            cur = None
            if rec.get("job_id") and not slurm_too:  # a Slurm start: its allocation is in allocations.jsonl
                continue
            cur = Allocation(start=t, end=t)
            out.append(cur)
        elif cur is not None:
            cur.end = max(cur.end or t, t)
            if kind == "exit":
                cur = None
    if live and cur is not None and now is not None and out and out[-1] is cur:
        cur.end = max(cur.end or now, now)
    return out


def allocated_seconds(
    allocations: list[Allocation], metrics: list[dict[str, Any]], now: float, live_job_id: str | None = None
) -> float:
    """Seconds the run held machines; an open allocation ends at `now` only while its job runs."""
    times = _record_times(metrics)
    total = 0.0
    for i, a in enumerate(allocations):
        end = a.end
        if end is None:
            if live_job_id is not None and a.job_id == live_job_id and i == len(allocations) - 1:
                end = now
            else:  # died without an end event: the last thing it wrote before the next allocation
                nxt = allocations[i + 1].start if i + 1 < len(allocations) else float("inf")
                inside = [t for t in times if a.start <= t < nxt]
                end = max(inside, default=a.start)
        total += max(0.0, end - a.start)
    return total


def productive_seconds(metrics: list[dict[str, Any]]) -> float:
    """Step time of the logged steps that survived: a step redone after a resume counts once."""
    segments: list[tuple[int, list[dict[str, Any]]]] = []
    for rec in metrics:
        kind = rec.get("kind")
        if kind == "start":
            segments.append((int(rec.get("step") or 0), []))
        elif kind == "train" and rec.get("step") is not None:
            if not segments:
                segments.append((0, []))
            segments[-1][1].append(rec)
    total = 0.0
    for i, (start_step, trains) in enumerate(segments):
        cutoff = segments[i + 1][0] if i + 1 < len(segments) else None
        prev = start_step
        for rec in trains:
            step, dt = int(rec["step"]), _num(rec.get("step_time_s"))
            kept_to = step if cutoff is None else min(step, cutoff)
            if dt is not None and kept_to > prev:
                total += (kept_to - prev) * dt
            prev = max(prev, step)
    return total


def goodput(
    metrics: list[dict[str, Any]],
    allocations: list[Allocation] | None = None,
    now: float | None = None,
    live_job_id: str | None = None,
    local_live: bool = False,
) -> float | None:
    """productive_seconds / allocated seconds (see the module docstring); None before any step."""
    if not any(r.get("kind") == "train" and _num(r.get("step_time_s")) is not None for r in metrics):
        return None
    times = _record_times(metrics)
    now = now if now is not None else (max(times) if times else 0.0)
    allocs = list(allocations or []) + local_allocations(metrics, live=local_live, now=now, slurm_too=not allocations)
    allocs.sort(key=lambda a: a.start)
    held = allocated_seconds(allocs, metrics, now, live_job_id)
    if held <= 0:
        return None
    return max(0.0, min(1.0, productive_seconds(metrics) / held))


def current_trains(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Train records of the latest attempt (since the last "start")."""
    last_start = max((i for i, r in enumerate(metrics) if r.get("kind") == "start"), default=-1)
    return [r for r in metrics[last_start + 1 :] if r.get("kind") == "train"]


def smoothed(trains: list[dict[str, Any]], key: str, n: int = SMOOTH_STEPS) -> float | None:
    """Mean of `key` over the last n records that have it."""
    vals = [v for v in (_num(r.get(key)) for r in trains) if v is not None][-n:]
    return sum(vals) / len(vals) if vals else None


def eta_seconds(step: int | None, total_steps: int | None, step_time_s: float | None, running: bool) -> float | None:
    """Remaining steps x smoothed step time, only while running."""
    if not running or step is None or not total_steps or step_time_s is None:
        return None
    return max(0, total_steps - step) * step_time_s


def last_checkpoint(run_dir: Path, script_checkpoint_dir: str | None = None) -> tuple[int, float] | None:
    """(step, mtime) of the newest committed checkpoint dir, or None. A script run (run config `script:`)
    keeps its own checkpoints (e.g. HF Trainer's checkpoint-N) in `script_checkpoint_dir`: the newest one
    `mltrain.runtime` would resume from counts there."""
    if script_checkpoint_dir is not None:
        from mltrain.runtime import checkpoint_step, latest_checkpoint

        found = latest_checkpoint(run_dir / script_checkpoint_dir)
        if found is None:
            return None
        p = Path(found)
        try:
            return checkpoint_step(p) or 0, p.stat().st_mtime
        except OSError:
            return None
    local = None
    for step, p in reversed(rundir.committed_checkpoints(run_dir)):
        try:
            local = step, (p / rundir.CHECKPOINT_MARKER).stat().st_mtime
            break
        except OSError:
            continue
    found = [c for c in (local, remote_commit(run_dir)) if c is not None]
    return max(found) if found else None


def surviving_trains(metrics: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The train records of the run's final history (module docstring): a start at step s drops the
    earlier records past s, which that attempt redoes."""
    out: list[dict[str, Any]] = []
    for rec in metrics:
        kind = rec.get("kind")
        if kind == "start":
            s = _num(rec.get("step"))
            if s is not None:
                out = [r for r in out if (_num(r.get("step")) or 0) <= s]
        elif kind == "train" and _num(rec.get("step")) is not None:
            out.append(rec)
    return out


def steps_reached(metrics: list[dict[str, Any]]) -> int | None:
    """The step the run has reached (module docstring); None before any record with a step."""
    reached: int | None = None
    for rec in metrics:
        s = _num(rec.get("step"))
        if s is None:
            continue
        kind = rec.get("kind")
        if kind == "start":
            reached = int(s)
        elif kind in ("train", "exit"):
            reached = int(s) if reached is None else max(reached, int(s))
    return reached


def last_loss(metrics: list[dict[str, Any]], n: int = SMOOTH_STEPS) -> tuple[float, int] | None:
    """(the last train loss, records averaged): mean over the last n surviving logged records."""
    losses = [v for v in (_num(r.get("loss")) for r in surviving_trains(metrics)) if v is not None][-n:]
    return (sum(losses) / len(losses), len(losses)) if losses else None


def loss_change(metrics: list[dict[str, Any]], n: int = SMOOTH_STEPS) -> tuple[float, float, int, int] | None:
    """(first train loss, last train loss, records in each): the report's labelled change. The last is
    `last_loss`, the figure status and the trainer console show; the first is the mean of as many of the
    first surviving records, at most half of them, so a short run still shows a change."""
    losses = [v for v in (_num(r.get("loss")) for r in surviving_trains(metrics)) if v is not None]
    if not losses:
        return None
    k_last = min(n, len(losses))
    k_first = min(n, max(1, len(losses) // 2))
    return sum(losses[:k_first]) / k_first, sum(losses[-k_last:]) / k_last, k_first, k_last


def loss_label(k_first: int, k_last: int) -> str:
    """How the first/last train loss were taken, in the words every command prints."""
    if k_first == k_last:
        return f"mean of first/last {k_last} logged"
    return f"mean of first {k_first} / last {k_last} logged"


def fmt_duration(s: float | None) -> str:
    """Short human duration: 45s, 12m05s, 3h07m, 2d04h."""
    if s is None:
        return "-"
    s = int(max(0, s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def console_progress(step: int, total_steps: int, started_at: float, now: float, step_times: list[float]) -> str:
    """The trainer console's progress words, with the same ETA rule as status: 'elapsed 3m05s, ETA 1m10s'."""
    recent = step_times[-SMOOTH_STEPS:]
    eta = eta_seconds(step, total_steps, sum(recent) / len(recent) if recent else None, True)
    return f"elapsed {fmt_duration(now - started_at)}, ETA {fmt_duration(eta)}"


def summary_line(metrics: list[dict[str, Any]], restarts: list[dict[str, Any]] | None = None) -> str:
    """The end-of-run line for the trainer console: steps, labelled loss change, restarts, goodput."""
    reached = steps_reached(metrics)
    parts = [f"{reached} steps" if reached else "no steps"]
    lc = loss_change(metrics)
    if lc:
        parts.append(f"train loss {lc[0]:.3f} -> {lc[1]:.3f} ({loss_label(lc[2], lc[3])})")
    parts.append(f"restarts {restarts_of(metrics, restarts or [])}")
    g = goodput(metrics)
    if g is not None:
        parts.append(f"goodput {100 * g:.0f}%")
    return ", ".join(parts)


def read_run_files(run_dir: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[Allocation]]:
    """metrics.jsonl, restarts.jsonl and slurm/allocations.jsonl of a run."""
    return (
        read_jsonl(run_dir / rundir.METRICS_FILE),
        read_jsonl(run_dir / rundir.RESTARTS_FILE),
        read_allocations(run_dir),
    )


__all__ = [
    "Allocation",
    "SMOOTH_STEPS",
    "count_restarts",
    "count_preemptions",
    "restarts_of",
    "read_allocations",
    "local_allocations",
    "allocated_seconds",
    "productive_seconds",
    "goodput",
    "current_trains",
    "smoothed",
    "eta_seconds",
    "last_checkpoint",
    "surviving_trains",
    "steps_reached",
    "last_loss",
    "loss_change",
    "loss_label",
    "fmt_duration",
    "console_progress",
    "summary_line",
    "read_run_files",
]
