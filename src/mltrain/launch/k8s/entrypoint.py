"""The command each training pod runs: torchrun with c10d rendezvous, then the restart decision.

`python -m mltrain.launch.k8s.entrypoint` (set by the rendered manifests). It writes the run config from
$MLTRAIN_RUN_CONFIG to `<run>/k8s/run.yaml` on the shared volume, runs torchrun (rendezvous on the first
pod: MASTER_ADDR/MASTER_PORT from the PyTorchJob operator, PET_MASTER_ADDR/PORT from Trainer v2), turns
SIGTERM (eviction, spot reclaim, `mltrain k8s cancel`) into control/stop so the trainer checkpoints, and
exits with the code policy.decide() picks from control/exit_reason. Node rank 0 appends the restart
record (same keys as the Slurm script); a pod whose own workers were killed by a signal names its node.
The records carry the pod's uid, so the recorder (recovery.py) does not record the same pod again. A pod
started after the job's budget was used up (a give_up record of this job, e.g. from the recorder) exits 1
at once: the operator treats that as permanent.
"""

from __future__ import annotations

import dataclasses
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from mltrain import exit_codes, rundir
from mltrain.fsutil import append_jsonl, atomic_write
from mltrain.launch.k8s import policy, recovery

RUN_CONFIG_NAME = "k8s/run.yaml"


def torchrun_command(env: dict[str, str], config: Path) -> list[str]:
    """torchrun over all pods; the c10d store lives on the first pod; no in-place torchrun restarts."""
    nnodes = env.get("PET_NNODES") or env.get("MLTRAIN_NNODES") or "1"
    nproc = env.get("MLTRAIN_NPROC_PER_NODE") or env.get("PET_NPROC_PER_NODE") or "1"
    host = env.get("PET_MASTER_ADDR") or env.get("MASTER_ADDR") or "127.0.0.1"
    port = env.get("PET_MASTER_PORT") or env.get("MASTER_PORT") or env.get("MLTRAIN_RDZV_PORT") or "29500"
    launcher = shlex.split(env.get("MLTRAIN_TORCHRUN", "torchrun"))
    return [
        *launcher,
        f"--nnodes={nnodes}",
        f"--nproc-per-node={nproc}",
        "--rdzv-backend=c10d",
        f"--rdzv-endpoint={host}:{port}",
        f"--rdzv-id={env.get('MLTRAIN_JOB_ID', 'mltrain')}",
        "--max-restarts=0",
        "-m",
        "mltrain",
        "train",
        str(config),
    ]


MEMORY_EVENTS = "/sys/fs/cgroup/memory.events"  # cgroup v2: this container's counters, oom_kill among them


def oom_kills(env: dict[str, str]) -> int | None:
    """The container's OOM-kill count (cgroup v2 memory.events), None where it cannot be read."""
    try:
        text = Path(env.get("MLTRAIN_MEMORY_EVENTS") or MEMORY_EVENTS).read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        if key == "oom_kill" and value.strip().isdigit():
            return int(value)
    return None


def node_rank(env: dict[str, str]) -> int:
    for key in ("PET_NODE_RANK", "JOB_COMPLETION_INDEX", "RANK"):
        if env.get(key, "").isdigit():
            return int(env[key])
    return 0


def main(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ if env is None else env)
    run_dir = Path(env["MLTRAIN_RUN_DIR"])
    job_id = env.get("MLTRAIN_JOB_ID", "mltrain")
    max_restarts = int(env.get("MLTRAIN_MAX_RESTARTS", "3"))
    leader = node_rank(env) == 0
    config = run_dir / RUN_CONFIG_NAME
    for sub in (rundir.CONTROL_DIR, rundir.HANGS_DIR):
        (run_dir / sub).mkdir(parents=True, exist_ok=True)
    atomic_write(config, env["MLTRAIN_RUN_CONFIG"])  # every pod writes the same text; rename is atomic
    if policy.gave_up(run_dir, job_id):
        print(f"[mltrain k8s] job {job_id} already gave up (launch.max_restarts used up): not starting", flush=True)
        return policy.EXIT_GIVE_UP
    if leader:
        for f in (rundir.STOP_FILE, rundir.EXIT_REASON_FILE):
            (run_dir / f).unlink(missing_ok=True)

    def on_term(signum, frame):  # checkpoint and exit `preempted` within terminationGracePeriodSeconds
        print(f"[mltrain k8s] signal {signum}: asking the trainer to checkpoint and stop", flush=True)
        (run_dir / rundir.STOP_FILE).touch()

    signal.signal(signal.SIGTERM, on_term)
    cmd = torchrun_command(env, config)
    print(f"[mltrain k8s] {shlex.join(cmd)}", flush=True)
    ooms_before = oom_kills(env)
    proc = subprocess.Popen(cmd, env=env)
    while True:
        try:
            rc = proc.wait()
            break
        except InterruptedError:  # pragma: no cover (PEP 475 retries; kept for clarity)
            continue
    reason = rundir.read_exit_reason(run_dir)
    failures = policy.failures_so_far(run_dir, job_id)
    decision = policy.decide(reason, rc, failures, max_restarts)
    ooms_after = oom_kills(env)
    if decision.cause == "lost_rank" and ooms_before is not None and (ooms_after or 0) > ooms_before:
        # the kernel's OOM killer took a rank (the container's reason becomes OOMKilled): say so
        decision = dataclasses.replace(decision, cause=recovery.CAUSE_OOM)
    node = env.get("NODE_NAME", "")
    attempt = env.get("POD_NAME", "")
    signal_death = rc < 0 or rc >= 128
    uid = {"pod_uid": env["POD_UID"]} if env.get("POD_UID") else {}
    if leader and decision.cause != exit_codes.REASON_DONE:
        rec = policy.restart_record(decision, job_id, attempt, node if signal_death else "", failures, run_dir)
        append_jsonl(run_dir / rundir.RESTARTS_FILE, {**rec, **uid})
    elif not leader and signal_death and decision.action != "none":
        rec = policy.restart_record(decision, job_id, attempt, node, failures, run_dir)
        append_jsonl(run_dir / rundir.RESTARTS_FILE, {**rec, "action": "node_failed", "counted": False, **uid})
    print(
        f"[mltrain k8s] torchrun exited {rc}, exit_reason={reason or '<none>'}: {decision.cause}, "
        f"action {decision.action}, exit {decision.exit_code} ({failures} of {max_restarts} restarts used)",
        flush=True,
    )
    return decision.exit_code


if __name__ == "__main__":
    sys.exit(main())
