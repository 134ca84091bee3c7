"""The decisions and records of the Slurm batch script (templates/job.sbatch.j2).

The batch script keeps in bash what must be bash: the signal traps, srun and the waits for it, scontrol and
sinfo, the detached helper that releases the requeue hold. Everything it decides or records is here:

- the records: `restarts.jsonl` (one line per restart, with its cause, node, count and the step the next
  start resumes from) and `slurm/allocations.jsonl` (each allocation's start and end);
- what ended an attempt: Slurm's own words in the job's `.err`, the trainer's exit reason and its words
  in the `.out`, each node's torchrun report and the watchdog's stack dumps (the node to blame);
- what to do about it: finish, give up, restart torchrun in place, requeue (counted or not against
  launch.max_restarts), and which nodes to leave out of the next attempt.

It is a file the batch script runs with the host's python3: `mltrain submit` copies it and
checkpoint_rule.py (the checkpoint-completeness rule it shares with the trainer) into the run's slurm/
dir, because mltrain may not be installed on the host (with a container, only the image has it). So:
standard library only, no mltrain imports other than that sibling, Python 3.7 syntax.

    python3 -B <run>/slurm/batch_helper.py --run-dir RUN [policy options] COMMAND [args]

The job comes from Slurm's environment (SLURM_JOB_ID, SLURM_RESTART_COUNT, SLURM_JOB_NUM_NODES,
SLURM_JOB_PARTITION). Log lines go to the job's `.out` (the exclusion plan's notes to stderr, the `.err`),
in the batch script's own format; a command's answer, if any, is its stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping, Sequence

if __package__:
    from mltrain import checkpoint_rule
else:  # run as a file beside the batch script
    import checkpoint_rule  # type: ignore[no-redef]

RESTARTS_FILE = "restarts.jsonl"
ALLOCATIONS_FILE = "slurm/allocations.jsonl"
CANCELLED_FILE = "control/cancelled"  # `mltrain cancel`: never requeue
STREAK_FILE = "control/preempt_streak"  # preemptions in a row without a new checkpoint
DEADLINE_FILE = "control/deadline"  # the trainer's deadline for this start (train/deadline.py): {at, time, source}
HANGS_DIR = "hangs"

# causes (restarts.jsonl "cause"; docs/slurm.md has the table)
ADMIN_REQUEUE = "admin_requeue"
NODE_FAILURE = "node_failure"
PREEMPTED = "preempted"
TIME_LIMIT = "time_limit"
CANCELLED = "cancelled"
TERMINATED = "terminated"
RANK_FAILURE = "rank_failure"
HANG = "hang"
HEALTH_CHECK = "health_check"
CONFIG_ERROR = "config_error"
DEADLINE = "deadline"  # the trainer checkpointed and stopped before its deadline
UNKNOWN = "unknown"
# actions
REQUEUE = "requeue"
RESTART_IN_PLACE = "restart_in_place"
GIVE_UP = "give_up"
NONE = "none"

# slurmstepd writes "*** JOB J ON n CANCELLED AT t DUE TO <WHY> ***" into the job's stderr before it signals
_SLURM_WORDS = (
    ("DUE TO JOB REQUEUE", ADMIN_REQUEUE),
    ("DUE TO NODE FAILURE", NODE_FAILURE),
    ("DUE TO PREEMPTION", PREEMPTED),
    ("DUE TO TIME LIMIT", TIME_LIMIT),
    ("CANCELLED AT", CANCELLED),
)
_ATTEMPT_MARK = re.compile(r"\[mltrain\] attempt [0-9]+ of job")
# a stop that reached the ranks but not the batch script, which nobody asked for (torchrun's agent tearing its
# workers down): the trainer checkpointed, but it is a failure
_UNASKED_STOPS = ("SIGTERM", "SIGINT", "SIGHUP", "a signal to another rank")
_STOP_WORDS = "[mltrain] stop requested ("
# the source of a deadline that is only this job's time limit (train/deadline.py SOURCE_TIME_LIMIT): a stop
# before it is requeued like the time limit's USR1 stop; any other deadline (--deadline, a capacity block's
# end) ends the allocation for good, so a stop before it is not requeued
DEADLINE_TIME_LIMIT = "slurm time limit"
# torchrun's failure report: "exitcode  : -9" = its own worker died of a signal (not SIGTERM/SIGINT/SIGHUP)
_KILLED = re.compile(r"exitcode *: *-([3-9]|1[0-46-9]|[2-9][0-9])\b")
_THREAD_HEADER = re.compile(r"^(Current thread|Thread) 0x")
_WAITING_IN_TORCH = re.compile(r"torch/(distributed|autograd|nn/parallel)")
_BAD_NODE_STATES = ("down", "drain", "fail", "maint", "*")  # sinfo %t: "*" = not responding


@dataclass
class Job:
    """One attempt of the batch script: its run dir, Slurm's view of it and the run's launch policy."""

    run_dir: Path
    job_id: str
    attempt: int = 0
    restart_count_set: bool = False  # Slurm leaves SLURM_RESTART_COUNT unset on the first run
    num_nodes: int = 1
    partition: str = ""
    max_restarts: int = 3
    max_in_place: int = 0
    max_preemptions: int = 3
    min_nodes: int = 1
    exclude_failed_nodes: bool = True
    checkpoint_dir: Path | None = None  # a script run's checkpoints (script.checkpoint_dir); None: mltrain's

    @property
    def out_log(self) -> Path:
        return self.run_dir / "slurm" / f"{self.job_id}.out"

    @property
    def err_log(self) -> Path:
        return self.run_dir / "slurm" / f"{self.job_id}.err"

    def log(self, msg: str, stderr: bool = False) -> None:
        """A line in the batch script's format (its log()), in the job's .out (or on stderr: the .err)."""
        line = f"[mltrain {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} job {self.job_id} attempt {self.attempt}] {msg}\n"
        if stderr:
            sys.stderr.write(line)
            sys.stderr.flush()
            return
        with open(self.out_log, "a") as fh:
            fh.write(line)


# --------------------------------------------------------------------------- records


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a .jsonl file; a torn or foreign line is skipped."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def append_jsonl(path: Path, rec: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(rec) + "\n")


def latest_step(job: Job) -> int | None:
    """The newest complete checkpoint's step: the step the next start resumes from (None before the first)."""
    if job.checkpoint_dir is None:
        return checkpoint_rule.latest_committed_step(job.run_dir)
    latest = checkpoint_rule.latest_checkpoint(job.checkpoint_dir)
    return None if latest is None else checkpoint_rule.checkpoint_step(Path(latest))


def _restarts(job: Job) -> list[dict]:
    return [r for r in read_jsonl(job.run_dir / RESTARTS_FILE) if str(r.get("job_id")) == job.job_id]


def failures_so_far(job: Job) -> int:
    """Restarts charged to launch.max_restarts in this job (preemptions and admin requeues are not)."""
    return sum(1 for r in _restarts(job) if r.get("counted") is True)


def restart_record(
    job: Job, cause: str, node: str | None, action: str, counted: bool, attempt: int | None = None
) -> dict:
    """A restarts.jsonl line: `step` and `resume_step` are the step the next start resumes from, `failures`
    the counted restarts of this job including this one."""
    att = job.attempt if attempt is None else attempt
    step = latest_step(job)
    return {
        "time": time.time(),
        "job_id": job.job_id,
        "attempt": att,
        "cause": cause,
        "node": node or None,
        "action": action,
        "counted": counted,
        "step": step,
        "slurm_restart_count": att if job.restart_count_set and att > 0 else None,
        "failures": failures_so_far(job) + (1 if counted else 0),
        "resume_step": step,
    }


def record(job: Job, cause: str, node: str | None, action: str, counted: bool, attempt: int | None = None) -> dict:
    rec = restart_record(job, cause, node, action, counted, attempt)
    append_jsonl(job.run_dir / RESTARTS_FILE, rec)
    return rec


def alloc_start(job: Job, nodes: Sequence[str], time_limit_s: int) -> None:
    rec = {"event": "start", "job_id": job.job_id, "time": time.time(), "attempt": job.attempt}
    append_jsonl(job.run_dir / ALLOCATIONS_FILE, {**rec, "nodes": list(nodes), "time_limit_s": time_limit_s})


def alloc_end(job: Job) -> None:
    append_jsonl(
        job.run_dir / ALLOCATIONS_FILE,
        {"event": "end", "job_id": job.job_id, "time": time.time(), "attempt": job.attempt},
    )


def alloc_recover(job: Job) -> bool:
    """The previous allocation of this job ended without its "end" line (the script was killed first): close
    it at the last write to the job's .err (Slurm's "CANCELLED ..." line), so pending time is not counted as
    allocated. Call before this attempt writes to the .err."""
    if job.attempt <= 0:
        return False
    path = job.run_dir / ALLOCATIONS_FILE
    try:
        lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
        last = json.loads(lines[-1]) if lines else None
    except (OSError, ValueError):
        return False
    if not isinstance(last, dict) or last.get("event") != "start" or str(last.get("job_id")) != job.job_id:
        return False
    try:
        when = int(job.err_log.stat().st_mtime)
    except OSError:
        when = int(time.time())
    append_jsonl(
        path, {"event": "end", "job_id": job.job_id, "time": when, "attempt": job.attempt - 1, "recovered": True}
    )
    return True


# --------------------------------------------------------------------------- what Slurm did to us


def kill_cause(job: Job, attempt: int | None = None) -> str:
    """Slurm's own words for an attempt (default: this one): its part of the .err, from the script's
    "[mltrain] attempt N of job J starts" line to the next attempt's; '' when Slurm said nothing."""
    att = job.attempt if attempt is None else attempt
    mark = f"[mltrain] attempt {att} of job {job.job_id} starts"
    try:
        text = job.err_log.read_text(errors="replace")
    except OSError:
        return ""
    section, on = [], False
    for line in text.splitlines():
        if line.startswith(mark):
            on = True
        elif _ATTEMPT_MARK.match(line):
            on = False
        elif on:
            section.append(line)
    words = "\n".join(section)
    return next((cause for said, cause in _SLURM_WORDS if said in words), "")


def wait_kill_cause(job: Job, wait_s: float, poll_s: float = 0.2) -> str:
    """kill_cause, waiting up to `wait_s` for slurmstepd's line (it may land just after the signal)."""
    for _ in range(max(1, round(wait_s / poll_s))):
        cause = kill_cause(job)
        if cause:
            return cause
        time.sleep(poll_s)
    return ""


def term_plan(job: Job, slurm_cause: str, job_state: str = "", restarts: str = "") -> tuple[str, str, bool, str]:
    """What SIGTERM means and what follows: (cause, action, counted, hold) where hold says what the detached
    helper does once the allocation is down: "release" the requeue hold, "requeue" the ended job first
    (Slurm never requeues a TIMEOUT) then release it, or "-" nothing. `job_state` and `restarts` (scontrol's
    JobState and Restarts) are read when Slurm's words are missing."""
    cause = slurm_cause
    if not cause:
        cause = (
            CANCELLED
            if job_state.startswith("CANCELLED")
            else TIME_LIMIT
            if job_state.startswith("TIMEOUT")
            else TERMINATED
        )
        if _int(restarts) > job.attempt:
            cause = ADMIN_REQUEUE
    if (job.run_dir / CANCELLED_FILE).exists():
        cause = CANCELLED
    if cause in (ADMIN_REQUEUE, PREEMPTED):
        return cause, REQUEUE, False, "release"
    if cause == NODE_FAILURE:
        return cause, REQUEUE, True, "release"
    if cause == TIME_LIMIT:
        # the USR1 checkpoint did not finish before the limit: requeue from the last committed checkpoint,
        # unless that would loop without progress
        if failures_so_far(job) < job.max_restarts and latest_step(job) is not None:
            return cause, REQUEUE, True, "requeue"
        return cause, GIVE_UP, True, "-"
    return cause, NONE, False, "-"


def record_previous_attempt(job: Job) -> dict | None:
    """Slurm requeues by itself (scontrol requeue, node failure, preemption); when the previous attempt's
    script was killed before it could record that, record it now so restarts.jsonl agrees with Slurm's
    Restarts / SLURM_RESTART_COUNT."""
    if job.attempt <= 0:
        return None
    prev = job.attempt - 1
    if any(r.get("attempt") == prev and r.get("action") == REQUEUE for r in _restarts(job)):
        return None
    cause = kill_cause(job, prev)
    # counted by the rule the killed script would have applied (term_plan): a lost record must not make a
    # node failure or a time limit free
    counted = cause in (NODE_FAILURE, TIME_LIMIT)
    rec = record(job, cause or UNKNOWN, None, REQUEUE, counted, attempt=prev)
    job.log(f"the previous attempt was requeued by Slurm ({cause or 'cause unknown'}); recorded")
    return rec


# --------------------------------------------------------------------------- which node to blame


def _torchrun_logs(prefix: str) -> list[tuple[str, Path]]:
    """(node, path) of each node's torchrun stderr copy `<prefix>.<node>.log`, by node name."""
    p = Path(prefix)
    try:
        names = sorted(x.name for x in p.parent.iterdir())
    except OSError:
        return []
    head = p.name + "."
    return [
        (n[len(head) : -len(".log")], p.parent / n)
        for n in names
        if n.startswith(head) and n.endswith(".log") and len(n) >= len(head) + len(".log")
    ]


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def blamed_node(torchrun_log: str, settle_s: float = 0.5) -> str | None:
    """The node whose own torchrun saw its worker die of a signal (its peers see only a connection reset);
    else the only node that reported a failure; else None."""
    time.sleep(settle_s)  # let the per-node tees flush
    killed = [n for n, f in _torchrun_logs(torchrun_log) if _KILLED.search(_read(f))]
    failed = [n for n, f in _torchrun_logs(torchrun_log) if "exitcode" in _read(f)]
    if len(killed) == 1:
        return killed[0]
    if not killed and len(failed) == 1:
        return failed[0]
    return None


def _main_thread(dump: str) -> str:
    """The stack of the thread with the <module> frame in a faulthandler dump (all threads)."""
    block: list[str] = []
    main = ""
    for line in dump.splitlines():
        if _THREAD_HEADER.match(line):
            block = []
        block.append(line)
        if "in <module>" in line:
            main = "\n".join(block)
    return main


def hung_node(job: Job, since: int, torchrun_log: str, settle_s: float = 0.5) -> str | None:
    """The node of the rank the watchdog caught stuck: of this run's stack dumps (hangs/rank<R>-<time>.txt,
    written at or after `since`), the one rank whose main thread is not waiting in torch's collectives or
    autograd, else the only dump; its node is the one whose torchrun failure report names that rank."""
    try:
        dumps = sorted(p for p in (job.run_dir / HANGS_DIR).iterdir() if p.is_file())
    except OSError:
        dumps = []
    ranks, stuck = [], []
    for p in dumps:
        m = re.match(r"^rank([0-9]+)-(?:.*-)?([0-9]+)\.txt$", p.name)
        if not m or int(m.group(2)) < since:
            continue
        ranks.append(m.group(1))
        if not _WAITING_IN_TORCH.search(_main_thread(_read(p))):
            stuck.append(m.group(1))
    if len(stuck) == 1:
        rank = stuck[0]
    elif len(ranks) == 1:
        rank = ranks[0]
    else:
        return None
    time.sleep(settle_s)  # let the per-node tees flush
    names_rank = re.compile(rf"rank *: {rank} \(local_rank")
    return next((n for n, f in _torchrun_logs(torchrun_log) if names_rank.search(_read(f))), None)


def trainer_stop_why(job: Job, run_no: int) -> str:
    """What stopped the trainer in this torchrun run, in its own words: rank 0 prints "stop requested (<why>)
    at step N" (why: SIGUSR1, SIGTERM, the stop file's first line, "a signal to another rank") into the
    job's .out after the script's "torchrun: ... (run N)" line."""
    start = f"job {job.job_id} attempt {job.attempt}] torchrun: "
    run = f"(run {run_no})"
    why = ""
    for line in _read(job.out_log).splitlines():
        if start in line and run in line:
            why = ""
        if re.search(r"\[mltrain\] stop requested \(.*\) at step ", line):
            w = line[line.rindex(_STOP_WORDS) + len(_STOP_WORDS) :]
            why = re.sub(r"\) at step .*", "", w, count=1)
    return why


# --------------------------------------------------------------------------- decisions


def exclusion_plan(job: Job, nodes: Iterable[str], excluded: Iterable[str], partition_nodes: Iterable[str]) -> str:
    """ExcNodeList (and node count) for the next attempt: the job's current exclusions + `nodes`; when the
    partition (sinfo lines "<node> <state>") has no spare, fewer nodes down to launch.min_nodes.
    "<exclude list> <nodes>" ("<exclude list> " to keep the node count), or "" to keep the nodes."""
    nodes = [n for n in nodes if n]
    if not job.exclude_failed_nodes or not nodes:
        return ""
    leave_out = sorted(set(nodes) | {n for n in excluded if n})
    usable = 0
    for line in sorted(set(partition_nodes)):
        fields = line.split(None, 1)
        if not fields:
            continue
        state = fields[1].strip() if len(fields) > 1 else ""
        if any(bad in state for bad in _BAD_NODE_STATES):
            continue
        usable += fields[0] not in leave_out
    if usable >= job.num_nodes:
        return ",".join(leave_out) + " "
    if usable >= job.min_nodes and usable >= 1:
        job.log(
            f"no spare node in {job.partition}: continuing on {usable} nodes (launch.min_nodes={job.min_nodes})",
            stderr=True,
        )
        return f"{','.join(leave_out)} {usable}"
    job.log(
        f"not excluding {','.join(nodes)}: partition {job.partition} has no spare node ({usable} usable, "
        f"{job.num_nodes} needed, min_nodes {job.min_nodes})",
        stderr=True,
    )
    return ""


def health_failed(job: Job, nodes: str, plan: str | None) -> str:
    """`launch.health_check` failed on `nodes` (comma-separated): "give_up" (recorded), "requeue" on `plan`
    (recorded, counted), or "plan": ask again with the exclusion plan (only asked for when a restart is left)."""
    n = failures_so_far(job)
    if n >= job.max_restarts:
        record(job, HEALTH_CHECK, nodes, GIVE_UP, True)
        job.log(
            f"health check failed on {nodes}: giving up after {n} restarts (launch.max_restarts={job.max_restarts})"
        )
        return GIVE_UP
    if plan is None:
        return "plan"
    if not plan.strip():
        record(job, HEALTH_CHECK, nodes, GIVE_UP, True)
        if job.exclude_failed_nodes:
            job.log(
                f"health check failed on {nodes} and no spare node can replace it "
                f"(launch.min_nodes={job.min_nodes}): giving up"
            )
        else:
            job.log(
                f"health check failed on {nodes}; slurm.exclude_failed_nodes is off, a requeue could land on it "
                "again: giving up"
            )
        return GIVE_UP
    record(job, HEALTH_CHECK, nodes, REQUEUE, True)
    job.log(f"health check failed on {nodes}: restart {n + 1} of {job.max_restarts} without it")
    return REQUEUE


@dataclass
class Ended:
    """How one torchrun run in this allocation ended, as the batch script saw it."""

    reason: str  # control/exit_reason (the trainer's last word), '' when none was written
    rc: int  # srun's exit status
    stop_requested: bool  # USR1 reached the batch script (Slurm's warning, `scancel --batch --signal=USR1`)
    in_place: int  # torchrun restarts in place so far in this allocation
    run_no: int  # torchrun launches so far in this allocation (0 = the first)
    run_t0: int  # when this run started (epoch seconds): older stack dumps are not its
    torchrun_log: str  # prefix of each node's torchrun stderr copy: <prefix>.<node>.log


def decide(
    job: Job, ended: Ended, nodes_healthy: bool | None = None, hyperpod: bool = False, settle_s: float = 0.5
) -> str:
    """The verdict on a torchrun run that ended, recorded in restarts.jsonl and logged:

    "exit <status>" (finished, cancelled, config error, given up), "restart_in_place", "requeue [<node to
    exclude>]", or "probe": a rank failure could restart in place if every node can still start a step;
    nothing is recorded yet, ask again with `nodes_healthy` (the logs have settled by then)."""
    notes: list[str] = []

    def verdict(v: str) -> str:
        for m in notes:
            job.log(m)
        return v

    reason = ended.reason
    if (job.run_dir / CANCELLED_FILE).exists():
        record(job, CANCELLED, None, NONE, False)
        notes.append("cancelled with mltrain cancel: not requeueing")
        return verdict("exit 0")
    if reason == "done" or (not reason and ended.rc == 0):
        notes.append("training finished")
        return verdict("exit 0")
    if reason == CONFIG_ERROR:
        record(job, CONFIG_ERROR, None, NONE, False)
        notes.append(f"config/precheck error: not requeued (the error is in {job.err_log})")
        return verdict("exit 2")
    if reason == DEADLINE:
        return verdict(_deadline(job, failures_so_far(job), notes))
    if hyperpod:  # srun --auto-resume=1 already replaced faulty nodes and reran the step: no self-requeue
        record(job, reason or RANK_FAILURE, None, GIVE_UP, True)
        notes.append("HyperPod auto-resume did not recover the step: giving up")
        return verdict("exit 1")
    n = failures_so_far(job)
    if reason == PREEMPTED and not ended.stop_requested:
        # a preemption is a stop Slurm or a user asked for: USR1 to this script (the time limit, scancel --batch
        # --signal=USR1), USR1 to the ranks (scancel --signal=USR1), or the stop file (mltrain stop)
        why = trainer_stop_why(job, ended.run_no)
        if why in _UNASKED_STOPS:
            notes.append(
                f"the trainer stopped on {why}, which neither Slurm nor a user sent: a rank failure, not a preemption"
            )
            reason = "rank_signal"
    if reason == PREEMPTED:
        return verdict(_preempted(job, n, notes))
    # hang (watchdog), failed (exception), a stop nobody asked for, or no reason at all (a rank was SIGKILLed or
    # a node died)
    first_look = nodes_healthy is None
    if reason == HANG:
        cause, node = HANG, hung_node(job, ended.run_t0, ended.torchrun_log, settle_s if first_look else 0)
    else:
        cause, node = RANK_FAILURE, blamed_node(ended.torchrun_log, settle_s if first_look else 0)
    where = node or "unknown node"
    if n >= job.max_restarts:
        record(job, cause, node, GIVE_UP, True)
        notes.append(f"{cause} on {where}: giving up after {n} restarts (launch.max_restarts={job.max_restarts})")
        return verdict("exit 1")
    if cause == RANK_FAILURE and ended.in_place < job.max_in_place:
        # a rank failure on healthy nodes: restart torchrun in this allocation from the last checkpoint
        if nodes_healthy is None:
            return "probe"
        if nodes_healthy:
            record(job, cause, node, RESTART_IN_PLACE, True)
            notes.append(
                f"{cause} on {where}: restarting torchrun in place ({ended.in_place + 1} of {job.max_in_place}), "
                f"restart {n + 1} of {job.max_restarts}"
            )
            return verdict(RESTART_IN_PLACE)
    record(job, cause, node, REQUEUE, True)
    notes.append(f"{cause} on {where}: restart {n + 1} of {job.max_restarts}")
    # a hang is not proof of a bad node (its node is recorded, not excluded); a rank failure's node is excluded
    return verdict(f"{REQUEUE} {node}" if cause == RANK_FAILURE and node else REQUEUE)


def deadline_source(job: Job) -> str:
    """The source of the deadline the trainer stopped before (control/deadline); '' when unknown."""
    try:
        rec = json.loads((job.run_dir / DEADLINE_FILE).read_text())
    except (OSError, ValueError):
        return ""
    return str(rec.get("source", "")) if isinstance(rec, dict) else ""


def _deadline(job: Job, n: int, notes: list[str]) -> str:
    """The trainer checkpointed and stopped before its deadline: when that deadline was only the job's time
    limit, requeue as after the time limit's USR1 stop (the next allocation has a new limit); else the
    allocation is ending anyway (a --deadline, a capacity block's end): recorded, not requeued."""
    source = deadline_source(job)
    if source == DEADLINE_TIME_LIMIT:
        notes.append("stopped before the job's time limit (checkpointed): requeueing as after a time-limit stop")
        return _preempted(job, n, notes)
    record(job, DEADLINE, None, NONE, False)
    notes.append(f"stopped before its deadline ({source or 'source unknown'}), checkpointed: not requeueing")
    return "exit 0"


def _preempted(job: Job, n: int, notes: list[str]) -> str:
    """A preemption that made no new checkpoint since the last preemption or time limit is a failure;
    launch.max_preemptions of those in a row: give up."""
    step = latest_step(job)
    prev = [r for r in _restarts(job) if r.get("cause") in (PREEMPTED, TIME_LIMIT)]
    streak_file = job.run_dir / STREAK_FILE
    if prev and prev[-1].get("step") == step:
        streak = _read_streak(streak_file) + 1
        _write_streak(streak_file, streak)
        if streak >= job.max_preemptions or n >= job.max_restarts:
            record(job, PREEMPTED, None, GIVE_UP, True)
            notes.append(
                f"preempted {streak} times in a row without a new checkpoint: giving up "
                f"(launch.max_preemptions={job.max_preemptions})"
            )
            return "exit 1"
        record(job, PREEMPTED, None, REQUEUE, True)
        notes.append(
            f"preempted without a new checkpoint since the last requeue ({streak} in a row): counted as a failure"
        )
    else:
        _write_streak(streak_file, 0)
        record(job, PREEMPTED, None, REQUEUE, False)
    return REQUEUE


def _read_streak(path: Path) -> int:
    try:
        return int(json.loads(path.read_text()).get("streak", 0))
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _write_streak(path: Path, streak: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"streak": streak}) + "\n")


def _int(text: str | None) -> int:
    try:
        return int(str(text).strip())
    except ValueError:
        return 0


# --------------------------------------------------------------------------- the command line


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="batch_helper.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--run-dir", required=True, type=Path)
    p.add_argument("--max-restarts", type=int, default=3)
    p.add_argument("--max-in-place", type=int, default=0)
    p.add_argument("--max-preemptions", type=int, default=3)
    p.add_argument("--min-nodes", type=int, default=0, help="default: the job's node count")
    p.add_argument("--exclude-failed-nodes", type=int, choices=(0, 1), default=1)
    p.add_argument("--checkpoint-dir", type=Path, help="a script run's checkpoint dir")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("latest-step", help="print the step the next start resumes from (null: none)")
    a = sub.add_parser("alloc-start", help="slurm/allocations.jsonl: this allocation starts")
    a.add_argument("--time-limit-s", type=int, required=True)
    a.add_argument("nodes", nargs="*")
    sub.add_parser("alloc-end", help="slurm/allocations.jsonl: this allocation ends")
    sub.add_parser("alloc-recover", help="close the previous allocation left without its end line")
    sub.add_parser("previous-attempt", help="record the previous attempt's requeue if Slurm's was not recorded")
    r = sub.add_parser("record", help="append a restarts.jsonl line; print its step")
    r.add_argument("cause")
    r.add_argument("node")
    r.add_argument("action", choices=(REQUEUE, RESTART_IN_PLACE, NONE, GIVE_UP))
    r.add_argument("counted", choices=("true", "false"))
    k = sub.add_parser("kill-cause", help="print Slurm's reason for ending this attempt ('' if none)")
    k.add_argument("--wait-s", type=float, default=0)
    t = sub.add_parser("term-plan", help='after SIGTERM: print "<cause> <action> <counted> <hold>"')
    t.add_argument("--cause", default="", help="kill-cause's answer")
    t.add_argument("--job-state", default="")
    t.add_argument("--restarts", default="")
    d = sub.add_parser("decide", help="the verdict on a torchrun run that ended (recorded, logged)")
    d.add_argument("--reason", default="")
    d.add_argument("--rc", type=int, required=True)
    d.add_argument("--stop-requested", type=int, choices=(0, 1), default=0)
    d.add_argument("--in-place", type=int, default=0)
    d.add_argument("--run-no", type=int, default=0)
    d.add_argument("--run-t0", type=int, default=0)
    d.add_argument("--torchrun-log", default="")
    d.add_argument("--nodes-healthy", type=int, choices=(0, 1))
    d.add_argument("--hyperpod", action="store_true")
    h = sub.add_parser("health-failed", help="the verdict on a failed health check (recorded, logged)")
    h.add_argument("--nodes", required=True)
    h.add_argument("--plan")
    e = sub.add_parser("exclusion-plan", help="sinfo -N -o '%%N %%t' lines on stdin; print the plan")
    e.add_argument("--nodes", default="")
    e.add_argument("--excluded", default="")
    return p


def job_from(args: argparse.Namespace, environ: Mapping[str, str] = os.environ) -> Job:
    """The Job of this batch script: Slurm's environment and the policy options."""
    num_nodes = _int(environ.get("SLURM_JOB_NUM_NODES")) or 1
    return Job(
        run_dir=args.run_dir,
        job_id=environ.get("SLURM_JOB_ID", ""),
        attempt=_int(environ.get("SLURM_RESTART_COUNT")),
        restart_count_set=bool(environ.get("SLURM_RESTART_COUNT")),
        num_nodes=num_nodes,
        partition=environ.get("SLURM_JOB_PARTITION", ""),
        max_restarts=args.max_restarts,
        max_in_place=args.max_in_place,
        max_preemptions=args.max_preemptions,
        min_nodes=args.min_nodes or num_nodes,
        exclude_failed_nodes=bool(args.exclude_failed_nodes),
        checkpoint_dir=args.checkpoint_dir,
    )


def _csv(text: str) -> list[str]:
    return [x for x in re.split(r"[,\s]+", text) if x]


def run(job: Job, args: argparse.Namespace) -> str | None:
    """One command; its answer for stdout (None: it has none)."""
    c = args.command
    if c == "latest-step":
        return json.dumps(latest_step(job))
    if c == "alloc-start":
        alloc_start(job, args.nodes, args.time_limit_s)
    elif c == "alloc-end":
        alloc_end(job)
    elif c == "alloc-recover":
        alloc_recover(job)
    elif c == "previous-attempt":
        record_previous_attempt(job)
    elif c == "record":
        return json.dumps(record(job, args.cause, args.node, args.action, args.counted == "true")["step"])
    elif c == "kill-cause":
        return wait_kill_cause(job, args.wait_s) if args.wait_s > 0 else kill_cause(job)
    elif c == "term-plan":
        cause, action, counted, hold = term_plan(job, args.cause, args.job_state, args.restarts)
        return f"{cause} {action} {json.dumps(counted)} {hold}"
    elif c == "decide":
        ended = Ended(
            args.reason, args.rc, args.stop_requested == 1, args.in_place, args.run_no, args.run_t0, args.torchrun_log
        )
        return decide(job, ended, None if args.nodes_healthy is None else args.nodes_healthy == 1, args.hyperpod)
    elif c == "health-failed":
        return health_failed(job, args.nodes, args.plan)
    elif c == "exclusion-plan":
        return exclusion_plan(job, _csv(args.nodes), _csv(args.excluded), sys.stdin.read().splitlines())
    return None


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] = os.environ) -> int:
    args = _parser().parse_args(argv)
    answer = run(job_from(args, environ), args)
    if answer is not None:
        print(answer)
    return 0


if __name__ == "__main__":
    sys.exit(main())
