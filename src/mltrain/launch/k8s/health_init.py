"""The pod's init container: `mltrain health` on this node's GPUs before training (launch.health_check).

`python -m mltrain.launch.k8s.health_init` (set by the rendered manifests). On FAIL it labels the node
`mltrain.io/gpu-health=failed` through the API (the rendered ClusterRole lets the pod's service account
get and patch nodes; without it the label is skipped with a warning), appends a `health_check` restart
record naming the node to the run dir's restarts.jsonl (charged, as on Slurm; the next render excludes the
node by hostname), and exits 1 so the pod fails before the trainer starts. The job's node affinity
(`mltrain.io/gpu-health NotIn failed`) keeps the replacement pod off the labelled node.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mltrain import rundir
from mltrain.fsutil import append_jsonl
from mltrain.launch.k8s import policy, recovery

HEALTH_RECORD = "k8s/health.jsonl"  # the checks' verdicts, one JSON line per pod start


def health_command(env: dict[str, str], run_dir: Path) -> list[str]:
    """`mltrain health` with its record in the run dir (MLTRAIN_HEALTH_CMD replaces the program in tests)."""
    import shlex

    prog = shlex.split(env.get("MLTRAIN_HEALTH_CMD") or f"{sys.executable} -m mltrain health")
    return [
        *prog,
        "--slurm-prolog",
        "--burn-in-s",
        env.get("MLTRAIN_HEALTH_BURN_IN_S", "10"),
        "--record",
        str(run_dir / HEALTH_RECORD),
    ]


def in_cluster_core() -> Any:
    """A CoreV1Api from the pod's service account."""
    from kubernetes import client, config

    config.load_incluster_config()
    return client.CoreV1Api()


def main(
    env: dict[str, str] | None = None,
    core: Any = None,
    run: Callable[[list[str]], subprocess.CompletedProcess[str]] | None = None,
) -> int:
    env = dict(os.environ if env is None else env)
    run_dir = Path(env["MLTRAIN_RUN_DIR"])
    node = env.get("NODE_NAME", "")
    cmd = health_command(env, run_dir)
    (run_dir / HEALTH_RECORD).parent.mkdir(parents=True, exist_ok=True)
    if run is None:

        def run(c: list[str]) -> subprocess.CompletedProcess[str]:
            return subprocess.run(c, env=env, capture_output=True, text=True, check=False)

    p = run(cmd)
    out = (p.stdout or "").strip()
    print(f"[mltrain k8s health] node {node}: {out or 'no output'} (exit {p.returncode})", flush=True)
    if p.returncode == 0:
        return 0
    why = out.splitlines()[-1] if out else f"mltrain health exited {p.returncode}"
    try:
        recovery.mark_node(core or in_cluster_core(), node, why)
        print(f"[mltrain k8s health] labelled {node} {recovery.HEALTH_LABEL}={recovery.HEALTH_FAILED}", flush=True)
    except Exception as e:  # no RBAC, no API: the run dir's record still excludes the node on the next submit
        print(f"[mltrain k8s health] warning: could not label node {node}: {e}".splitlines()[0], flush=True)
    job_id = env.get("MLTRAIN_JOB_ID", "mltrain")
    max_restarts = int(env.get("MLTRAIN_MAX_RESTARTS", "3"))
    failures = policy.failures_so_far(run_dir, job_id)
    action = "give_up" if failures >= max_restarts else "requeue"
    decision = policy.Decision(policy.EXIT_FAILED, recovery.CAUSE_HEALTH, action, True)
    rec = policy.restart_record(decision, job_id, env.get("POD_NAME", ""), node, failures, run_dir)
    append_jsonl(run_dir / rundir.RESTARTS_FILE, {**rec, "pod_uid": env.get("POD_UID") or None, "detail": why})
    return 1


if __name__ == "__main__":
    sys.exit(main())
