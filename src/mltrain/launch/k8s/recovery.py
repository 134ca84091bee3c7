"""Restart records for pod and node failures the in-pod wrapper did not live to record.

The wrapper (entrypoint.py) records every attempt it sees end: the trainer's exit reason, its own exit code.
What kills the wrapper itself (the OOM killer, SIGKILL, an eviction it did not outlive, a node that went
NotReady) leaves no record in the pod; this module reads those from the pods' statuses and appends one
`restarts.jsonl` line per failure, in the wrapper's format (policy.restart_record), charged to the same
`job_id` and so to the same `launch.max_restarts` budget.

Each record carries `k8s_key` = `<pod uid>/<restart count>` (one pod incarnation), so polling the same pods
again records nothing new. A pod the wrapper already recorded (its records carry `pod_uid`) and a container
that ended with one of the wrapper's own exit codes (the wrapper decided, and node rank 0 recorded the
job's restart) are left alone. It runs from `mltrain k8s status`, `mltrain k8s watch` and `mltrain status`:
whoever polls the job; no long-running watcher is needed for what the API still shows.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mltrain import exit_codes, rundir
from mltrain.fsutil import append_jsonl, read_jsonl
from mltrain.launch.k8s import policy

CAUSE_OOM = "oom_killed"  # the container's reason OOMKilled: memory of the job, not the node's fault
CAUSE_KILLED = "killed"  # the wrapper died of a signal (exit 128+N, e.g. 137 SIGKILL)
CAUSE_EVICTED = "evicted"  # pod status.reason Evicted: a disruption, not charged (like a preemption)
CAUSE_NODE = "node_failure"  # the pod's node is NotReady/Unknown or gone (the Slurm script's word)
CAUSE_HEALTH = "health_check"  # the init container's `mltrain health` failed on the node

NODE_GRACE_S = 60.0  # a node NotReady this long is a failed node (the pods' eviction follows after 300 s)
HEALTH_LABEL = "mltrain.io/gpu-health"  # set to HEALTH_FAILED on a node whose GPUs failed the check
HEALTH_FAILED = "failed"
HEALTH_REASON_ANNOTATION = "mltrain.io/gpu-health-reason"

# exit codes the wrapper itself chooses: it lived, decided and (on node rank 0) recorded the restart
WRAPPER_EXIT_CODES = frozenset(
    {
        policy.EXIT_DONE,
        policy.EXIT_GIVE_UP,
        policy.EXIT_CONFIG_ERROR,
        policy.EXIT_FAILED,
        policy.EXIT_PREEMPTED,
        policy.EXIT_HANG,
    }
)


@dataclass(frozen=True)
class PodFailure:
    """One pod incarnation's end, as the API shows it."""

    key: str  # <pod uid>/<restart count>
    pod: str
    node: str | None
    cause: str
    counted: bool
    exit_code: int | None


def node_ready(node: dict[str, Any] | None, now: float | None = None) -> bool | None:
    """The node's Ready condition: True; False when False or Unknown for NODE_GRACE_S or more (a kubelet that
    misses a heartbeat or two is not a failed node); None when the node or its condition is not known yet."""
    if node is None:
        return None
    for c in (node.get("status") or {}).get("conditions") or []:
        if c.get("type") == "Ready":
            if str(c.get("status")) == "True":
                return True
            since = _epoch(c.get("lastTransitionTime"))
            if since is not None and (time.time() if now is None else now) - since < NODE_GRACE_S:
                return None
            return False
    return None


def _epoch(stamp: Any) -> float | None:
    """An API timestamp (RFC 3339, e.g. 2026-11-30T10:00:00Z) in epoch seconds; None when unreadable."""
    from datetime import datetime

    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _main_status(pod: dict[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    return statuses[0] if statuses else None


def _terminated(cs: dict[str, Any] | None) -> list[tuple[int, dict[str, Any]]]:
    """(restart count of that incarnation, its terminated state): lastState first, then the current state."""
    if cs is None:
        return []
    n = int(cs.get("restartCount") or 0)
    out = []
    last = (cs.get("lastState") or {}).get("terminated")
    if last and n > 0:
        out.append((n - 1, last))
    cur = (cs.get("state") or {}).get("terminated")
    if cur:
        out.append((n, cur))
    return out


def _from_exit(term: dict[str, Any], node: str | None) -> tuple[str, bool, str | None] | None:
    """(cause, counted, node to name) for a container that ended on its own terms; None: not a failure of ours."""
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":
        return CAUSE_OOM, True, None
    if not isinstance(code, int) or code in WRAPPER_EXIT_CODES:
        return None
    if code == exit_codes.REQUEUE:  # the trainer's own 75 (no wrapper around it): checkpointed, not charged
        return exit_codes.REASON_PREEMPTED, False, None
    if code == exit_codes.HANG:  # the trainer's own 76: the watchdog fired
        return exit_codes.REASON_HANG, True, None
    if code >= 128:  # the wrapper died of a signal: name the node, as the wrapper does for its ranks
        return CAUSE_KILLED, True, node
    return exit_codes.REASON_FAILED, True, None


def classify(pod: dict[str, Any], ready: dict[str, bool | None]) -> list[PodFailure]:
    """The failures of one pod (a dict in the API's camelCase); `ready`: its node's Ready state by name."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    uid, name = str(meta.get("uid") or meta.get("name") or "?"), str(meta.get("name") or "?")
    node = (pod.get("spec") or {}).get("nodeName")
    cs = _main_status(pod)
    n = int((cs or {}).get("restartCount") or 0)
    out: list[PodFailure] = []
    for count, term in _terminated(cs):
        if count == n and status.get("reason") == "Evicted":
            continue  # the pod-level reason below says it better
        what = _from_exit(term, node)
        if what is not None:
            out.append(PodFailure(f"{uid}/{count}", name, what[2], what[0], what[1], term.get("exitCode")))
    current = (cs or {}).get("state") or {}
    if status.get("reason") == "Evicted":
        code = (current.get("terminated") or {}).get("exitCode")
        if code not in WRAPPER_EXIT_CODES:  # else the wrapper outlived it and recorded it (as preempted)
            out.append(PodFailure(f"{uid}/{n}", name, None, CAUSE_EVICTED, False, code))
    elif (
        node
        and not current.get("terminated")
        and status.get("phase") in ("Running", "Unknown", "Pending")
        and (ready.get(node) is False or status.get("reason") == "NodeLost")
    ):
        out.append(PodFailure(f"{uid}/{n}", name, node, CAUSE_NODE, True, None))
    return out


def _pod_env(pod: dict[str, Any], key: str) -> str | None:
    containers = (pod.get("spec") or {}).get("containers") or []
    for e in (containers[0].get("env") or []) if containers else []:
        if e.get("name") == key and e.get("value") is not None:
            return str(e["value"])
    return None


def record_failures(
    run_dir: Path, pods: list[dict[str, Any]], ready: dict[str, bool | None], now: float | None = None
) -> list[dict[str, Any]]:
    """Append one restarts.jsonl record per pod failure not recorded yet; returns the new records.

    The job id and budget come from each pod's own env (MLTRAIN_JOB_ID, MLTRAIN_MAX_RESTARTS): the records
    are charged to the same submission as the wrapper's, and a counted failure past the budget is `give_up`.
    """
    existing = read_jsonl(run_dir / rundir.RESTARTS_FILE)
    seen = {str(r["k8s_key"]) for r in existing if r.get("k8s_key")}
    by_wrapper = {str(r["pod_uid"]) for r in existing if r.get("pod_uid") and not r.get("k8s_key")}
    new: list[dict[str, Any]] = []
    order = sorted(pods, key=lambda p: str((p.get("metadata") or {}).get("creationTimestamp") or ""))
    for pod in order:
        uid = str((pod.get("metadata") or {}).get("uid") or "")
        if uid and uid in by_wrapper:
            continue
        job_id = _pod_env(pod, "MLTRAIN_JOB_ID") or str((pod.get("metadata") or {}).get("name") or "mltrain")
        try:
            max_restarts = int(_pod_env(pod, "MLTRAIN_MAX_RESTARTS") or 3)
        except ValueError:
            max_restarts = 3
        for f in classify(pod, ready):
            if f.key in seen:
                continue
            failures = policy.failures_so_far(run_dir, job_id)
            action = "give_up" if f.counted and failures >= max_restarts else "requeue"
            decision = policy.Decision(policy.EXIT_FAILED, f.cause, action, f.counted)
            rec = policy.restart_record(decision, job_id, f.pod, f.node or "", failures, run_dir)
            step = rec["resume_step"]
            rec.update(node=f.node, step=step, k8s_key=f.key, pod=f.pod, exit_code=f.exit_code, time=now or time.time())
            append_jsonl(run_dir / rundir.RESTARTS_FILE, rec)
            seen.add(f.key)
            new.append(rec)
    return new


@dataclass(frozen=True)
class Budget:
    """`launch.max_restarts` of one submission: charged restarts so far, and whether it is used up."""

    job_id: str
    used: int
    max_restarts: int
    gave_up: bool  # a record (the wrapper's or the recorder's) already gave up

    @property
    def exhausted(self) -> bool:
        return self.gave_up or self.used >= self.max_restarts

    def words(self) -> str:
        if self.exhausted:
            return f"restart budget used up: {self.used} of {self.max_restarts} charged (job {self.job_id})"
        return f"restart budget: {self.used} of {self.max_restarts} charged (job {self.job_id})"


def budget(run_dir: Path, job_id: str, max_restarts: int) -> Budget:
    """Charged restarts of `job_id`, from the wrapper's and the recorder's records alike."""
    recs = [r for r in read_jsonl(run_dir / rundir.RESTARTS_FILE) if str(r.get("job_id")) == job_id]
    gave_up = any(r.get("action") == "give_up" for r in recs)
    return Budget(job_id, policy.failures_so_far(run_dir, job_id), max_restarts, gave_up)


def causes(run_dir: Path) -> Counter[str]:
    """Restarts by cause (the records runstats counts as restarts, plus the give-ups)."""
    return Counter(
        str(r.get("cause"))
        for r in read_jsonl(run_dir / rundir.RESTARTS_FILE)
        if r.get("action") in ("requeue", "restart_in_place", "give_up")
    )


def causes_line(run_dir: Path) -> str | None:
    """'restarts by cause: oom_killed 1, evicted 1' or None without any."""
    c = causes(run_dir)
    if not c:
        return None
    return "restarts by cause: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def record(
    core: Any, pods: list[Any], run_dir: Path, timeout_s: float | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Record the failures of `pods` (V1Pod objects a CoreV1Api listed), reading their nodes through it:
    (the pods as dicts, the new records). A node that cannot be read (no permission, or gone: its pods are
    about to be garbage-collected) counts as unknown, so no node failure is recorded for it."""
    from kubernetes.client.exceptions import ApiException

    api = core.api_client
    dicts = [api.sanitize_for_serialization(p) for p in pods]
    ready: dict[str, bool | None] = {}
    for name in sorted({(p.get("spec") or {}).get("nodeName") for p in dicts} - {None}):
        try:
            ready[name] = node_ready(api.sanitize_for_serialization(core.read_node(name, _request_timeout=timeout_s)))
        except ApiException:
            ready[name] = None
    return dicts, record_failures(run_dir, dicts, ready)


def poll(
    core: Any, namespace: str, selector: str, run_dir: Path, timeout_s: float | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """List the job's pods (label `selector`) and record their failures: (the pods as dicts, new records)."""
    pods = core.list_namespaced_pod(namespace, label_selector=selector, _request_timeout=timeout_s).items
    return record(core, pods, run_dir, timeout_s)


def mark_node(core: Any, node: str, reason: str) -> None:
    """Label the node HEALTH_LABEL=failed (and say why in an annotation): the jobs' node affinity avoids it."""
    body = {
        "metadata": {
            "labels": {HEALTH_LABEL: HEALTH_FAILED},
            "annotations": {HEALTH_REASON_ANNOTATION: reason[:250]},
        }
    }
    core.patch_node(node, body)
