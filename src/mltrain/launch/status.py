"""`mltrain status`: one table row per run, from the run dir and (when there is one) the scheduler.

Everything but the scheduler column comes from files in the run dir (metrics.jsonl, restarts.jsonl,
control/exit_reason), so it works the same for local runs, Slurm runs and runs whose job records
have aged out of slurmctld. Scheduler queries never raise: squeue, then scontrol, then sacct.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mltrain import rundir
from mltrain.fsutil import read_jsonl
from mltrain.launch.slurm import (
    ACTIVE_STATES,
    JOBS_FILE,
    RUN_CONFIG_NAME,
    find_run,
    latest_job_id,
    log_files,
    query_job,
)

REASON_WORDS = {
    "done": "finished",
    "preempted": "stopped for preemption / time limit (checkpointed)",
    "hang": "hang: the watchdog dumped stacks to hangs/ and stopped the job",
    "failed": "crashed (exception in the trainer)",
    "lost_rank": "a rank or node was lost (no exit reason written)",
    "config_error": "stopped: config error, not requeued",
    "terminated": "terminated by Slurm (scancel, preemption), not self-requeued",
}


@dataclass
class RunStatus:
    """What `status` knows about one run; each field may be unknown (None)."""

    name: str
    run_dir: Path
    job_id: str | None = None
    scheduler: str | None = None  # e.g. "RUNNING node[1-2]"; None = no Slurm record
    scheduler_state: str | None = None  # e.g. "RUNNING"; None = unknown
    step: int | None = None
    total_steps: int | None = None
    loss: float | None = None
    tokens_per_s: float | None = None
    mfu: float | None = None
    eta_s: float | None = None
    restarts: int = 0
    preemptions: int = 0
    goodput: float | None = None
    exit_reason: str | None = None
    explanation: str = ""
    notes: list[str] = field(default_factory=list)


def _total_steps(run_dir: Path) -> int | None:
    for p in (run_dir / rundir.CONFIG_FILE, run_dir / rundir.SLURM_DIR / RUN_CONFIG_NAME):
        try:
            data = yaml.safe_load(p.read_text()) or {}
            return int(data["train"]["max_steps"])
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError):
            continue
    return None


def goodput(metrics: list[dict[str, Any]], now: float | None = None) -> float | None:
    """Productive training time / wall time since the first start.

    Productive: for each attempt (from one "start" line to the next), the steps that survived
    (up to the step the next attempt resumed from) times that attempt's mean step time. Lost steps
    after the last checkpoint, checkpoint saves, evals, start-up and queue time are not productive.
    """
    segments: list[dict[str, Any]] = []
    for rec in metrics:
        kind = rec.get("kind")
        if kind == "start":
            segments.append(
                {"start_step": int(rec.get("step") or 0), "times": [], "last_step": None, "t0": rec.get("time")}
            )
        elif segments and kind == "train" and rec.get("step") is not None:
            seg = segments[-1]
            if rec.get("step_time_s") is not None:
                seg["times"].append(float(rec["step_time_s"]))
            seg["last_step"] = int(rec["step"])
        elif segments and kind == "exit" and rec.get("step") is not None:
            segments[-1]["last_step"] = max(int(rec["step"]), segments[-1]["last_step"] or 0)
    if not segments or segments[0]["t0"] is None:
        return None
    productive = 0.0
    for i, seg in enumerate(segments):
        if not seg["times"] or seg["last_step"] is None:
            continue
        end = seg["last_step"]
        if i + 1 < len(segments):
            end = min(end, segments[i + 1]["start_step"])
        kept = max(0, end - seg["start_step"])
        productive += kept * (sum(seg["times"]) / len(seg["times"]))
    last_time = max((float(r["time"]) for r in metrics if isinstance(r.get("time"), (int, float))), default=None)
    finished = metrics and metrics[-1].get("kind") == "exit"
    end_time = last_time if finished or now is None else now
    wall = (end_time or 0.0) - float(segments[0]["t0"])
    if wall <= 0:
        return None
    return max(0.0, min(1.0, productive / wall))


def _error_line(run_dir: Path, job_id: str | None) -> str | None:
    """The first line of the trainer's error: control/exit_message, else the job's stderr `error:` line."""
    try:
        msg = (run_dir / rundir.EXIT_MESSAGE_FILE).read_text().strip().splitlines()
        if msg:
            return msg[0]
    except OSError:
        pass
    if job_id:
        try:
            lines = log_files(run_dir, job_id)[1].read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in lines:
            if line.lstrip().startswith("error:"):
                return line.strip()[len("error:") :].strip()
    return None


def run_status(run_dir: Path, now: float | None = None) -> RunStatus:
    """Collect everything about one run (no printing; used by show_status and the tests)."""
    now = time.time() if now is None else now
    st = RunStatus(name=run_dir.name, run_dir=run_dir)
    metrics = read_jsonl(run_dir / rundir.METRICS_FILE)
    trains = [r for r in metrics if r.get("kind") == "train"]
    st.total_steps = _total_steps(run_dir)
    if trains:
        last = trains[-1]
        st.step, st.loss = last.get("step"), last.get("loss")
        st.tokens_per_s, st.mfu = last.get("tokens_per_s"), last.get("mfu")
        recent = [float(r["step_time_s"]) for r in trains[-20:] if r.get("step_time_s")]
        if recent and st.total_steps and st.step is not None:
            st.eta_s = max(0, st.total_steps - st.step) * sum(recent) / len(recent)
    exits = [r for r in metrics if r.get("kind") == "exit"]
    if exits and (st.step is None or (exits[-1].get("step") or 0) > st.step):
        st.step = exits[-1].get("step")
    st.goodput = goodput(metrics, now)

    restarts = read_jsonl(run_dir / rundir.RESTARTS_FILE)
    requeues = [r for r in restarts if r.get("action") == "requeue"]
    st.restarts = len(requeues)
    st.preemptions = sum(1 for r in requeues if r.get("cause") == "preempted")

    st.job_id = latest_job_id(run_dir)
    state = None
    if st.job_id:
        info = query_job(st.job_id)
        if info is None:
            st.scheduler = f"job {st.job_id}: unknown to Slurm (aged out?)"
        else:
            state = st.scheduler_state = info["state"]
            where = (
                info["nodes"] if state == "RUNNING" else (info["reason"] if info["reason"] not in ("", "None") else "")
            )
            st.scheduler = f"{state} {where}".strip()

    st.exit_reason = rundir.read_exit_reason(run_dir)
    last_decision = restarts[-1] if restarts else None
    reason = st.exit_reason
    if reason is None and last_decision is not None and state not in ("RUNNING", None):
        reason = last_decision.get("cause")
    running = state in ("RUNNING", "COMPLETING") or (state is None and reason is None and trains)
    if reason is None:
        st.explanation = "running" if running else ("pending" if state in ACTIVE_STATES else "no exit recorded")
        if state == "PENDING" and last_decision is not None and last_decision.get("action") == "requeue":
            st.explanation = f"requeued after {last_decision.get('cause')}, waiting to start"
    else:
        words = REASON_WORDS.get(reason, reason)
        if reason == "config_error":
            err = _error_line(run_dir, st.job_id)
            words += f": {err}" if err else " (see the job's .err log)"
        elif reason != "done" and last_decision is not None and last_decision.get("cause") == reason:
            action = last_decision.get("action")
            if action == "requeue":
                resume = last_decision.get("resume_step")
                words += "; requeued" + (f", resumes from step {resume}" if resume is not None else "")
            elif action == "give_up":
                words += f"; gave up after {last_decision.get('failures')} restarts (launch.max_restarts)"
        if state in ("RUNNING", "PENDING") and reason != "config_error":
            words = f"{state.lower()}; last stop: {words}"
        st.explanation = words
    if st.job_id and (run_dir / "control" / "cancelled").exists():
        st.notes.append("cancelled with mltrain cancel")
    return st


def _fmt_eta(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def _discover(base: Path) -> list[Path]:
    runs = base / rundir.RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(
        p
        for p in runs.iterdir()
        if p.is_dir() and ((p / rundir.CONFIG_FILE).is_file() or (p / rundir.SLURM_DIR / JOBS_FILE).is_file())
    )


def show_status(run: str | None = None, console: Console | None = None) -> list[RunStatus]:
    """`mltrain status [RUN]`: a table (scheduler column only when some run has a Slurm job)."""
    console = console or Console()
    if run is not None:
        dirs = [find_run(run)]
    else:
        base = rundir.default_base()
        dirs = _discover(base)
        if not dirs:
            console.print(
                f"no runs under {base / rundir.RUNS_DIR} (set MLTRAIN_BASE_DIR or pass a run dir)", highlight=False
            )
            return []
    rows = [run_status(d) for d in dirs]
    with_sched = any(r.job_id for r in rows)
    table = Table(title="mltrain runs", box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    table.add_column("run", overflow="fold")
    if with_sched:
        table.add_column("job", no_wrap=True)
    for col in ("step", "loss", "tok/s", "MFU", "ETA", "rst", "good"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("status", overflow="fold", min_width=8)
    for r in rows:
        step = f"{r.step if r.step is not None else '-'}/{r.total_steps or '?'}"
        cells = [escape(r.name)]
        if with_sched:
            cells.append(escape(f"{r.job_id} {r.scheduler_state or '?'}" if r.job_id else "-"))
        cells += [
            step,
            f"{r.loss:.4f}" if isinstance(r.loss, (int, float)) else "-",
            f"{r.tokens_per_s:,.0f}" if isinstance(r.tokens_per_s, (int, float)) else "-",
            f"{100 * r.mfu:.1f}%" if isinstance(r.mfu, (int, float)) else "-",
            "done" if r.exit_reason == "done" else _fmt_eta(r.eta_s),
            f"{r.restarts}" + (f" ({r.preemptions}p)" if r.preemptions else ""),
            f"{100 * r.goodput:.0f}%" if r.goodput is not None else "-",
            escape(r.explanation.split(":")[0].split(";")[0]),
        ]
        table.add_row(*cells)
    console.print(table)
    for r in rows:  # the full reason, never truncated by a narrow terminal
        extra = [r.scheduler] if r.scheduler and r.scheduler != r.scheduler_state else []
        if r.explanation not in ("finished", "running") or r.notes or extra:
            text = "; ".join([*extra, r.explanation, *r.notes])
            console.print(f"{escape(r.name)}: {escape(text)}", highlight=False, soft_wrap=True)

    return rows
