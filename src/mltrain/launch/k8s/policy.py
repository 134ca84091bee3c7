"""Recovery policy on Kubernetes: the trainer's exit reason -> the container's exit code -> restart or not.

torchrun collapses worker exit codes into 1, so (as on Slurm) the in-pod wrapper reads the word rank 0
wrote to `<run>/control/exit_reason` and exits with a code the operator can act on. The training
operator's `restartPolicy: ExitCode` restarts a pod only for codes 128-255 and treats 1-127 as permanent,
so the restartable reasons are shifted by 128 (75 preempted -> 203, 76 hang -> 204); config errors (2)
and an exhausted restart budget (1) stay below 128 and are never restarted. The Trainer v2 runtime
(a JobSet) gets the same table as a podFailurePolicy.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain import exit_codes, rundir
from mltrain.fsutil import read_jsonl

RETRYABLE_BASE = 128  # training-operator ExitCode policy: exit codes >= 128 are retryable
EXIT_DONE = exit_codes.DONE
EXIT_CONFIG_ERROR = exit_codes.CONFIG_ERROR  # permanent: never restarted
EXIT_GIVE_UP = 1  # permanent: launch.max_restarts used up
EXIT_PREEMPTED = RETRYABLE_BASE + exit_codes.REQUEUE  # 203: checkpointed, restart, not charged
EXIT_HANG = RETRYABLE_BASE + exit_codes.HANG  # 204: watchdog fired, restart, charged
EXIT_FAILED = RETRYABLE_BASE + 1  # 129: exception or lost rank, restart, charged

PERMANENT_EXIT_CODES = (EXIT_GIVE_UP, EXIT_CONFIG_ERROR)


def exit_code_table() -> str:
    """One line for the manifest's annotation, so whoever reads the job sees what the codes mean."""
    return (
        f"{EXIT_DONE} done; {EXIT_CONFIG_ERROR} config_error (never restarted); "
        f"{EXIT_GIVE_UP} launch.max_restarts used up (never restarted); "
        f"{EXIT_PREEMPTED} preempted (restart, not charged); {EXIT_HANG} hang (restart); "
        f"{EXIT_FAILED} failed or lost rank (restart)"
    )


@dataclass(frozen=True)
class Decision:
    exit_code: int
    cause: str
    action: str  # "none" | "requeue" | "give_up"
    counted: bool


def decide(reason: str | None, torchrun_rc: int, failures: int, max_restarts: int) -> Decision:
    """What this attempt's end means. `failures`: restarts already charged to this job."""
    if reason == exit_codes.REASON_DONE or (reason is None and torchrun_rc == 0):
        return Decision(EXIT_DONE, exit_codes.REASON_DONE, "none", False)
    if reason == exit_codes.REASON_CONFIG_ERROR:
        return Decision(EXIT_CONFIG_ERROR, reason, "none", False)
    if reason == exit_codes.REASON_PREEMPTED:
        return Decision(EXIT_PREEMPTED, reason, "requeue", False)
    cause = reason or "lost_rank"
    if failures >= max_restarts:
        return Decision(EXIT_GIVE_UP, cause, "give_up", True)
    return Decision(EXIT_HANG if reason == exit_codes.REASON_HANG else EXIT_FAILED, cause, "requeue", True)


def failures_so_far(run_dir: Path, job_id: str) -> int:
    """Restarts charged to `job_id` in restarts.jsonl (preemptions are not charged), as on Slurm."""
    return sum(
        1
        for r in read_jsonl(run_dir / rundir.RESTARTS_FILE)
        if str(r.get("job_id")) == job_id and r.get("counted") is True and r.get("action") == "requeue"
    )


def gave_up(run_dir: Path, job_id: str) -> bool:
    """A record of `job_id` already gave up: its restart budget is used up."""
    return any(
        str(r.get("job_id")) == job_id and r.get("action") == "give_up"
        for r in read_jsonl(run_dir / rundir.RESTARTS_FILE)
    )


def failed_nodes(run_dir: Path | None) -> list[str]:
    """Nodes named in restarts.jsonl (`node` field, written by the Slurm script and the k8s wrapper)."""
    if run_dir is None:
        return []
    nodes: set[str] = set()
    for r in read_jsonl(run_dir / rundir.RESTARTS_FILE):
        node = r.get("node")
        if isinstance(node, str) and node.strip():
            nodes.add(node.strip())
    return sorted(nodes)


def latest_checkpoint_step(run_dir: Path) -> int | None:
    """The newest committed checkpoint step (the step the next attempt resumes from)."""
    committed = rundir.committed_checkpoints(run_dir)
    return committed[-1][0] if committed else None


def restart_record(
    decision: Decision, job_id: str, attempt: str, node: str, failures: int, run_dir: Path
) -> dict[str, Any]:
    """A restarts.jsonl line with the same keys the Slurm batch script writes."""
    import time

    return {
        "time": time.time(),
        "job_id": job_id,
        "attempt": attempt,
        "cause": decision.cause,
        "node": node,
        "action": decision.action,
        "counted": decision.counted,
        "failures": failures + (1 if decision.counted and decision.action == "requeue" else 0),
        "resume_step": latest_checkpoint_step(run_dir),
        "scheduler": "kubernetes",
    }
