"""`mltrain status [RUN...]`: one table row per run, then one detail line per run.

Everything but the scheduler's view comes from files in the run dir (metrics.jsonl, restarts.jsonl,
slurm/allocations.jsonl, control/), so it works the same for local runs, Slurm runs and runs whose job
records have aged out of slurmctld. Scheduler queries never raise: squeue, then scontrol, then sacct.
Restarts, goodput, ETA and the smoothed loss / tokens/s are defined once, in mltrain.runstats.
The table fits the console's width by dropping low-priority columns (mltrain.tables), never by
wrapping a row or splitting a run name.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.markup import escape

from mltrain import rundir, runstats
from mltrain.launch.slurm import (
    ACTIVE_STATES,
    CANCELLED_FILE,
    JOBS_FILE,
    RUN_CONFIG_NAME,
    SlurmUnreachable,
    find_run,
    latest_job_id,
    log_files,
    query_job,
)
from mltrain.tables import Column, fit_table

REASON_WORDS = {
    "done": "finished",
    "preempted": "stopped for preemption / time limit (checkpointed)",
    "hang": "hang: the watchdog dumped stacks to hangs/ and stopped the job",
    "failed": "crashed (exception in the trainer)",
    "interrupted": "interrupted: Ctrl-C twice, not checkpointed (the next start resumes from the newest checkpoint)",
    "lost_rank": "a rank or node was lost (no exit reason written)",
    "config_error": "stopped: config error, not requeued",
    "terminated": "terminated by Slurm (scancel, preemption), not self-requeued",
    "health_check": "GPU health check failed (slurm/health.jsonl)",
    "deadline": "stopped before its deadline (checkpointed)",
    "oom_killed": "a pod was OOM-killed (Kubernetes)",
    "killed": "a pod was killed by a signal (Kubernetes)",
    "evicted": "a pod was evicted (Kubernetes)",
    "node_failure": "a node failed (Slurm node failure, Kubernetes NotReady)",
}
SHORT_WORDS = {
    "done": "done",
    "preempted": "stopped",
    "hang": "hang",
    "failed": "failed",
    "interrupted": "interrupted",
    "lost_rank": "lost rank",
    "config_error": "config err",
    "terminated": "terminated",
    "health_check": "unhealthy",
    "deadline": "deadline",
    "oom_killed": "OOM",
    "killed": "killed",
    "evicted": "evicted",
    "node_failure": "node failed",
}
RUNNING_STATES = {"RUNNING", "COMPLETING", "CONFIGURING"}
# a PyTorchJob/TrainJob's newest condition in the Slurm states the rest of this module reasons with
K8S_STATES = {
    "Created": "PENDING",
    "Pending": "PENDING",
    "Restarting": "PENDING",
    "Running": "RUNNING",
    "Succeeded": "COMPLETED",
    "Failed": "FAILED",
}
LOCAL_STALE_S = 300.0  # a run dir without a lease file (older runs): silent this long = not running


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
    loss: float | None = None  # runstats.last_loss: mean of the last SMOOTH_STEPS surviving logged records
    tokens_per_s: float | None = None  # idem
    mfu: float | None = None
    eta_s: float | None = None  # only while running
    restarts: int = 0
    preemptions: int = 0
    goodput: float | None = None
    exit_reason: str | None = None  # why the latest attempt ended; None while it runs or when not recorded
    running: bool = False
    cancelled: bool = False
    state: str = "-"  # one word for the table: running, pending, requeued, done, cancelled, failed, ...
    nodes: str | None = None
    alloc_elapsed_s: float | None = None
    alloc_left_s: float | None = None
    ckpt_step: int | None = None
    ckpt_age_s: float | None = None
    explanation: str = ""
    notes: list[str] = field(default_factory=list)
    stragglers: int = 0  # straggler records in metrics.jsonl (mltrain.telemetry.stragglers)
    last_straggler: dict[str, Any] | None = None
    deadline_at: float | None = None  # the latest start's deadline (train/deadline.py), epoch seconds
    deadline_source: str | None = None  # --deadline, capacity block end, slurm time limit
    deadline_left_s: float | None = None  # only while running


def _run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved run config (config.yaml, else the copy the Slurm launcher keeps), {} when unreadable."""
    for p in (run_dir / rundir.CONFIG_FILE, run_dir / rundir.SLURM_DIR / RUN_CONFIG_NAME):
        try:
            data = yaml.safe_load(p.read_text())
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict):
            return data
    return {}


def _total_steps(config: dict[str, Any], metrics: list[dict[str, Any]]) -> int | None:
    """train.max_steps, else (a script run) the max_steps its newest start record announced."""
    try:
        return int(config["train"]["max_steps"])
    except (KeyError, TypeError, ValueError):
        pass
    for rec in reversed(metrics):
        if rec.get("kind") == "start" and isinstance(rec.get("max_steps"), int):
            return int(rec["max_steps"])
    return None


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
        except (OSError, IndexError):
            return None
        for line in lines:
            if line.lstrip().startswith("error:"):
                return line.strip()[len("error:") :].strip()
    return None


def _local_holder(run_dir: Path) -> tuple[bool, dict[str, Any] | None]:
    """(whether the run has a run-dir lease file, its live holder): a lease file whose holder is gone means
    the local trainer is not running, whatever its last records say."""
    from mltrain.lease import LOCK_FILE, lease_holder

    if not (run_dir / LOCK_FILE).exists():
        return False, None
    try:
        return True, lease_holder(run_dir)
    except Exception:  # status never fails on a damaged lease file
        return True, None


def _exit_reason_is_current(run_dir: Path, metrics: list[dict[str, Any]]) -> bool:
    """control/exit_reason is about the latest start unless that start began after it was written."""
    starts = [float(r["time"]) for r in metrics if r.get("kind") == "start" and isinstance(r.get("time"), (int, float))]
    if not starts:
        return True
    try:
        return (run_dir / rundir.EXIT_REASON_FILE).stat().st_mtime >= starts[-1] - 1.0
    except OSError:
        return False


def may_still_run(why: str, job_id: str | None) -> str:
    """Why a run is `unknown`: its scheduler did not answer (`why`), so its job may still be queued or running."""
    return f"{why}; job {job_id} may still be queued or running: ask again"


def run_status(run_dir: Path, now: float | None = None, k8s_down: dict[str, str] | None = None) -> RunStatus:
    """Collect everything about one run (no printing; used by show_status and the tests)."""
    now = time.time() if now is None else now
    st = RunStatus(name=run_dir.name, run_dir=run_dir)
    metrics, restarts, allocs = runstats.read_run_files(run_dir)
    trains = [r for r in metrics if r.get("kind") == "train"]
    cur = runstats.current_trains(metrics)
    last_rec = metrics[-1] if metrics else None
    config = _run_config(run_dir)
    st.total_steps = _total_steps(config, metrics)
    kept = runstats.surviving_trains(metrics)
    if trains:
        st.step = runstats.steps_reached(metrics)
        st.mfu = runstats.smoothed(kept, "mfu")
        last = runstats.last_loss(metrics)
        st.loss = last[0] if last else None
        st.tokens_per_s = runstats.smoothed(kept, "tokens_per_s")
    exits = [r for r in metrics if r.get("kind") == "exit"]
    if exits and st.step is None:
        st.step = runstats.steps_reached(metrics)
    st.restarts = runstats.restarts_of(metrics, restarts)
    slow = [r for r in metrics if r.get("kind") == "straggler"]
    st.stragglers, st.last_straggler = len(slow), (slow[-1] if slow else None)
    st.preemptions = runstats.count_preemptions(restarts)
    script = config.get("script")
    ck = runstats.last_checkpoint(
        run_dir, script.get("checkpoint_dir", rundir.CHECKPOINTS_DIR) if isinstance(script, dict) else None
    )
    if ck:
        st.ckpt_step, st.ckpt_age_s = ck[0], max(0.0, now - ck[1])

    # ---- who is running it: Slurm, a local process, or nobody
    st.job_id = latest_job_id(run_dir)
    state = None
    info = None
    unanswered: str | None = None  # the scheduler could not be asked: the job may still be queued or running
    k8s = None if st.job_id else _k8s_view(run_dir, k8s_down)
    if k8s is not None:  # a Kubernetes run: the job's condition as `kubectl get pytorchjob` shows it
        st.job_id, st.scheduler_state = k8s["job_id"], k8s["state"]
        state = K8S_STATES.get(k8s["state"] or "")
        info = {"state": state, "nodes": ",".join(k8s["nodes"]), "reason": ""} if state else None
        st.scheduler = f"job {st.job_id}: " + (k8s["state"] or f"Kubernetes API: {k8s.get('error')}")
        if not k8s["state"] and k8s.get("error"):
            unanswered = f"the Kubernetes API did not answer: {k8s['error']}"
        restarts = runstats.read_run_files(run_dir)[1]  # the poll may have added records
        st.restarts, st.preemptions = runstats.restarts_of(metrics, restarts), runstats.count_preemptions(restarts)
        st.notes.extend(k8s["notes"])
    elif st.job_id:
        try:
            info = query_job(st.job_id)
        except SlurmUnreachable as e:
            unanswered = str(e)
        if unanswered:
            st.scheduler = f"job {st.job_id}: not answering"
        elif info is None:
            st.scheduler = f"job {st.job_id}: unknown to Slurm (aged out?)"
        else:
            state = st.scheduler_state = info["state"]
            where = (
                info["nodes"]
                if state in RUNNING_STATES
                else (info["reason"] if info["reason"] not in ("", "None") else "")
            )
            st.scheduler = f"{state} {where}".strip()
    has_lease, holder = _local_holder(run_dir) if state is None else (False, None)
    ended = last_rec is not None and last_rec.get("kind") == "exit"
    if state is not None:
        st.running = state in RUNNING_STATES
    elif has_lease:
        st.running = holder is not None
    elif trains and not ended and not st.job_id:
        # no lease information (a run dir from before the lease): a local run is running while it keeps writing records
        last_t = last_rec.get("time") if last_rec else None
        st.running = (
            isinstance(last_t, (int, float))
            and now - float(last_t) < LOCAL_STALE_S
            and (rundir.read_exit_reason(run_dir) is None or not _exit_reason_is_current(run_dir, metrics))
        )
    live_job = st.job_id if st.running and st.job_id else None
    st.goodput = runstats.goodput(
        metrics, allocs, now=now, live_job_id=live_job, local_live=st.running and not st.job_id
    )
    step_time = runstats.smoothed(cur, "step_time_s")
    st.eta_s = runstats.eta_seconds(st.step, st.total_steps, step_time, st.running)

    # ---- where and how long: nodes and the current allocation
    if st.running and info is not None and info.get("nodes"):
        st.nodes = info["nodes"] if "[" in info["nodes"] else compress_nodes(info["nodes"].split(","))
    elif allocs and allocs[-1].nodes:
        st.nodes = compress_nodes(allocs[-1].nodes)
    elif holder is not None and holder.get("host"):
        st.nodes = str(holder["host"])
    if st.running and allocs and allocs[-1].end is None and (st.job_id is None or allocs[-1].job_id == st.job_id):
        st.alloc_elapsed_s = max(0.0, now - allocs[-1].start)
        if allocs[-1].time_limit_s:
            st.alloc_left_s = max(0.0, allocs[-1].time_limit_s - st.alloc_elapsed_s)
    elif st.running and not st.job_id:  # a local run: since its trainer started (no time limit)
        starts = [r.get("time") for r in metrics if r.get("kind") == "start"]
        if starts and isinstance(starts[-1], (int, float)):
            st.alloc_elapsed_s = max(0.0, now - float(starts[-1]))

    _deadline(st, metrics, now)

    # ---- why it is in this state
    # the launcher's last decision, when it is about the newest job: a decision about an earlier job (cancelled
    # for a node move, then resubmitted) says nothing about the one that followed
    last_decision = restarts[-1] if restarts and restarts[-1].get("job_id") in (None, st.job_id) else None
    st.cancelled = not st.running and (
        state == "CANCELLED"
        or (st.job_id is not None and (run_dir / CANCELLED_FILE).exists())
        or (last_decision is not None and last_decision.get("cause") == "cancelled")
    )
    reason = rundir.read_exit_reason(run_dir) if _exit_reason_is_current(run_dir, metrics) else None
    # an exit reason left by an earlier attempt says nothing about the one running now
    st.exit_reason = None if st.running else reason
    if reason is None and last_decision is not None and state not in RUNNING_STATES and state is not None:
        reason = last_decision.get("cause")
    resumes = f"resumes from step {st.ckpt_step}" if st.ckpt_step is not None else "starts from step 0"
    # the last thing the trainer wrote is a "done" exit: a later refused start did not change that
    finished_before = bool(exits) and exits[-1].get("reason") == "done" and last_rec is exits[-1]
    if st.running:
        st.state, st.explanation = "running", "running"
        if last_decision is not None and last_decision.get("action") in runstats.RESTART_ACTIONS and st.restarts:
            st.explanation = f"running; resumed after {last_decision.get('cause')}{_on_node(last_decision)}"
    elif st.cancelled:
        st.state = "cancelled"
        st.explanation = f"cancelled; a new submit {resumes}"
    elif state in ACTIVE_STATES:
        if last_decision is not None and last_decision.get("action") == "requeue":
            st.state = "requeued"
            st.explanation = (
                f"requeued after {last_decision.get('cause')}{_on_node(last_decision)}, waiting to start; {resumes}"
            )
        else:
            st.state, st.explanation = (
                "pending",
                "pending" + (f" ({info['reason']})" if info and info.get("reason") not in (None, "", "None") else ""),
            )
    elif reason == "config_error" and finished_before:
        err = _error_line(run_dir, st.job_id)
        st.state = "done"
        st.explanation = "finished; a later start was refused" + (f": {err}" if err else "")
    elif reason is not None:
        st.state = SHORT_WORDS.get(reason, reason)
        words = REASON_WORDS.get(reason, reason)
        if reason == "config_error":
            err = _error_line(run_dir, st.job_id)
            if err:
                words += f": {err}"
            else:
                words += " (see the job's .err log)" if st.job_id else f" (see mltrain logs {run_dir.name})"
        elif reason == "deadline" and st.deadline_at is not None:
            words += f"; its deadline: {_utc(st.deadline_at)} ({st.deadline_source})"
            if not st.job_id:
                words += f"; mltrain train {resumes}"
        elif reason == "preempted" and not st.job_id:
            words = f"stopped on request at step {st.step} (checkpointed); mltrain train {resumes}"
        elif reason != "done" and last_decision is not None and last_decision.get("cause") == reason:
            words += _on_node(last_decision)
            action = last_decision.get("action")
            if action == "requeue":
                step = last_decision.get("resume_step", last_decision.get("step"))
                words += "; requeued" + (f", resumes from step {step}" if step is not None else "")
            elif action == "restart_in_place":
                words += "; restarted in place"
            elif action == "give_up":
                words += f"; gave up after {last_decision.get('failures', st.restarts)} restarts (launch.max_restarts)"
        st.explanation = words
    elif trains:
        st.state = "stopped"
        st.explanation = (
            f"job {state}, no exit recorded" if state else "not running, no exit recorded (killed?); " + resumes
        )
    else:
        st.state, st.explanation = "-", "no exit recorded" if st.job_id else "not started"
    if unanswered and st.state not in ("done", "running", "cancelled"):
        # what the run's files say (stopped, failed, pending...) may be old news: the scheduler may have
        # requeued or started it since, so nobody should act on it (submit again, give up waiting)
        st.notes.append(f"from the run's files: {st.explanation}")
        st.state = "unknown"
        st.explanation = may_still_run(unanswered, st.job_id)
    if st.state == "done":
        st.eta_s = None
    # why it last restarted (and on which node, when one was named), once it no longer runs
    restarted = [r for r in restarts if r.get("action") in runstats.RESTART_ACTIONS]
    if restarted and not st.running and st.state not in ("requeued",):
        st.notes.append(f"last restart: {restarted[-1].get('cause')}{_on_node(restarted[-1])}")
    if st.job_id and (run_dir / CANCELLED_FILE).exists():
        if st.cancelled:
            st.explanation = st.explanation.replace("cancelled;", "cancelled with mltrain cancel;", 1)
        else:
            st.notes.append("cancelled with mltrain cancel")
    return st


def _k8s_view(run_dir: Path, down: dict[str, str] | None = None) -> dict[str, Any] | None:
    """A run submitted with `mltrain k8s submit` (k8s/jobs.jsonl): its job's condition, after recording its
    pods' failures (launch/k8s/recovery.py), plus its restarts by cause; None for any other run."""
    if not (run_dir / "k8s" / "jobs.jsonl").is_file():
        return None
    from mltrain.launch.k8s.client import run_view
    from mltrain.launch.k8s.recovery import causes_line

    view = run_view(run_dir, down)
    if view is not None:
        view["notes"] = [line] if (line := causes_line(run_dir)) else []
    return view


def _deadline(st: RunStatus, metrics: list[dict[str, Any]], now: float) -> None:
    """The deadline of the latest start record (and, while running, the time left to it)."""
    starts = [r for r in metrics if r.get("kind") == "start"]
    rec = starts[-1].get("deadline") if starts else None
    if not isinstance(rec, dict) or not isinstance(rec.get("time"), (int, float)):
        return
    st.deadline_at = float(rec["time"])
    st.deadline_source = str(rec.get("source") or "deadline")
    if st.running:
        st.deadline_left_s = st.deadline_at - now


def _utc(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def deadline_words(r: RunStatus) -> str | None:
    """'deadline in 2h05m (capacity block end)' while running; None otherwise."""
    if r.deadline_left_s is None:
        return None
    if r.deadline_left_s < 0:
        return f"deadline passed {runstats.fmt_duration(-r.deadline_left_s)} ago ({r.deadline_source})"
    return f"deadline in {runstats.fmt_duration(r.deadline_left_s)} ({r.deadline_source})"


def _on_node(decision: dict[str, Any]) -> str:
    node = decision.get("node")
    return f" on {compress_nodes(str(node).split(','))}" if node else ""


def compress_nodes(nodes: list[str]) -> str:
    """Slurm's short form of a node list: node1,node2,node3,gpu7 -> node[1-3],gpu7 (zero padding kept;
    first-seen order of the prefixes; a name without a trailing number stays as it is)."""
    groups: dict[str, list[str]] = {}  # prefix -> its numbers; a bare name is its own group ("\0" + name)
    for n in nodes:
        m = re.fullmatch(r"(.*?)(\d+)", n)
        if m is None:
            groups.setdefault("\0" + n, [])
        else:
            groups.setdefault(m.group(1), []).append(m.group(2))
    out: list[str] = []
    for key, nums in groups.items():
        if key.startswith("\0"):
            out.append(key[1:])
            continue
        vals = sorted(set(nums), key=lambda x: (int(x), x))
        if len(vals) == 1:
            out.append(key + vals[0])
            continue
        ranges: list[str] = []
        start = prev = vals[0]
        for v in [*vals[1:], None]:
            if v is not None and int(v) == int(prev) + 1 and (len(v) == len(prev) or not (_padded(prev) or _padded(v))):
                prev = v
                continue
            ranges.append(start if start == prev else f"{start}-{prev}")
            if v is not None:
                start = prev = v
        out.append(f"{key}[{','.join(ranges)}]")
    return ",".join(out)


def _padded(digits: str) -> bool:
    return digits.startswith("0") and len(digits) > 1


def wrap_line(prefix: str, text: str, width: int) -> list[str]:
    """`prefix` + `text` in lines of at most `width` columns, continuation lines indented two spaces: whole
    "; "-separated parts where they fit, else broken at spaces, inside a word (a long path) only when a
    word alone is wider than the line. Nothing is cut."""
    import textwrap

    width = max(20, width)
    lines: list[str] = []
    cur = prefix
    for i, part in enumerate(text.split("; ")):
        piece = part + (";" if i < text.count("; ") else "")
        sep = "" if cur == prefix else " "
        if len(cur) + len(sep) + len(piece) <= width:
            cur += sep + piece
            continue
        if cur.strip() and cur != prefix:
            lines.append(cur)
            cur = "  "
        # `cur` (the prefix, or the continuation indent) as initial_indent: textwrap would drop it as leading
        # whitespace of the text when the first word fits the line only without it
        wrapped = textwrap.wrap(
            piece,
            width=width,
            initial_indent=cur,
            subsequent_indent="  ",
            break_on_hyphens=False,
        )
        lines.extend(wrapped[:-1])
        cur = wrapped[-1] if wrapped else cur
    lines.append(cur)
    return [line.rstrip() for line in lines if line.strip()]


def straggler_line(r: RunStatus) -> str | None:
    """'stragglers: 3 (last at step 500: rank 13 on p5-7, NVIDIA H100, 1.42x the median)', None without any."""
    last = r.last_straggler
    if not r.stragglers or last is None:
        return None
    t, med = last.get("rank_time_s"), last.get("median_s")
    if isinstance(t, (int, float)) and isinstance(med, (int, float)) and med > 0:
        ratio: float | None = t / med
    else:
        ratio = 1 + last["slowdown"] if isinstance(last.get("slowdown"), (int, float)) else None
    where = ", ".join(
        str(x)
        for x in (
            f"rank {last.get('rank', '?')} on {last.get('host', '?')}",
            last.get("gpu"),
            f"{ratio:.2f}x the median" if ratio is not None else None,
        )
        if x
    )
    return f"stragglers: {r.stragglers} (last at step {last.get('step', '?')}: {where})"


def status_json(r: RunStatus) -> dict[str, Any]:
    """One run for `mltrain status --json` (the RunStatus fields; stragglers as {count, last})."""
    from dataclasses import asdict

    doc = asdict(r)
    doc["run_dir"] = str(r.run_dir)
    doc.pop("last_straggler")
    doc["stragglers"] = {"count": r.stragglers, "last": r.last_straggler}
    return doc


def _discover(base: Path) -> list[Path]:
    runs = base / rundir.RUNS_DIR
    if not runs.is_dir():
        return []
    return sorted(
        p
        for p in runs.iterdir()
        if p.is_dir() and ((p / rundir.CONFIG_FILE).is_file() or (p / rundir.SLURM_DIR / JOBS_FILE).is_file())
    )


# priority: 0 = always shown; higher numbers are dropped first when the console is narrow
STATUS_COLUMNS = [
    Column("run", "left", 0),
    Column("state", "left", 0),
    Column("step", "right", 0),
    Column("loss", "right", 1),
    Column("ETA", "right", 2),
    Column("good", "right", 3),
    Column("rst", "right", 4),
    Column("tok/s", "right", 5),
    Column("job", "right", 6),
    Column("ckpt", "right", 7),
    Column("MFU", "right", 8),
]


def _cells(r: RunStatus) -> list[str]:
    num = (int, float)
    return [
        r.name,
        r.state,
        f"{r.step if r.step is not None else '-'}/{r.total_steps or '?'}",
        f"{r.loss:.3f}" if isinstance(r.loss, num) else "-",
        runstats.fmt_duration(r.eta_s),
        f"{100 * r.goodput:.0f}%" if r.goodput is not None else "-",
        f"{r.restarts}" + (f" ({r.preemptions}p)" if r.preemptions else ""),
        f"{r.tokens_per_s:,.0f}" if isinstance(r.tokens_per_s, num) else "-",
        r.job_id or "-",
        str(r.ckpt_step) if r.ckpt_step is not None else "-",
        f"{100 * r.mfu:.1f}%" if isinstance(r.mfu, num) else "-",
    ]


def detail_line(r: RunStatus) -> str:
    """Everything the table has no room for: job and its state, nodes, allocation time, checkpoint, why."""
    parts: list[str] = []
    if r.job_id:
        parts.append(f"job {r.job_id} {r.scheduler_state}" if r.scheduler_state else (r.scheduler or f"job {r.job_id}"))
    if r.nodes:
        parts.append(f"on {r.nodes}")
    if r.alloc_elapsed_s is not None:
        left = f", {runstats.fmt_duration(r.alloc_left_s)} left" if r.alloc_left_s is not None else ""
        parts.append(f"allocation {runstats.fmt_duration(r.alloc_elapsed_s)} in{left}")
    parts.append(deadline_words(r) or "")
    if r.ckpt_step is not None:
        parts.append(f"ckpt step {r.ckpt_step} ({runstats.fmt_duration(r.ckpt_age_s)} ago)")
    parts.append(r.explanation)
    parts.extend(r.notes)
    return "; ".join(p for p in parts if p)


def show_status(
    runs: str | list[str] | None = None, console: Console | None = None, json_out: bool = False
) -> list[RunStatus]:
    """`mltrain status [RUN...]`: a table that fits the console, then one detail line per run (and its
    stragglers); `json_out`: a JSON list instead."""
    console = console or Console()
    if isinstance(runs, str):
        runs = [runs]
    if runs:
        dirs = [find_run(r) for r in runs]
    else:
        base = rundir.default_base()
        dirs = _discover(base)
        if not dirs and not json_out:
            console.print(
                f"no runs under {base / rundir.RUNS_DIR} (set MLTRAIN_BASE_DIR or pass a run dir)", highlight=False
            )
            return []
    k8s_down: dict[str, str] = {}  # shared by the runs of this call: an unreachable API server is waited for once
    rows = [run_status(d, k8s_down=k8s_down) for d in dirs]
    if json_out:
        import json

        console.out(json.dumps([status_json(r) for r in rows], indent=2, default=str), highlight=False)
        return rows
    cols = list(STATUS_COLUMNS)
    cells = [_cells(r) for r in rows]
    if not any(r.job_id for r in rows):  # no Slurm anywhere: no job column
        idx = [c.header for c in cols].index("job")
        cols.pop(idx)
        cells = [c[:idx] + c[idx + 1 :] for c in cells]
    table, dropped = fit_table(cols, cells, console.width)
    console.print(table)
    # the detail lines: nothing cut, nothing wider than the console (wrapped here, at "; " where possible)
    for r in rows:
        for text in (detail_line(r), straggler_line(r)):
            for line in wrap_line(f"{r.name}: ", text, console.width) if text else []:
                console.print(escape(line), highlight=False, soft_wrap=True)
    if dropped:
        for line in wrap_line("", f"(narrow terminal: {', '.join(dropped)} not shown)", console.width):
            console.print(f"[dim]{escape(line)}[/]", highlight=False, soft_wrap=True)
    return rows
