"""Prometheus file-based service discovery (file_sd) targets for a run's nodes.

Prometheus (configs/prometheus/prometheus.yml) watches `<base>/prometheus/targets/*.json` (file_sd allows
a wildcard only in the last path element, so all runs under one base share the directory; files are
named after the run).
Two writers, same format: each node's exporter registers itself when it starts serving
(`write_self_target`), and the Slurm batch script can write the whole job at once from its node list
(`write_job_targets`, before srun), so nodes are scraped from the first second.
"""

from __future__ import annotations

import json
from pathlib import Path

from mltrain.fsutil import atomic_write

TARGETS_DIR = "prometheus/targets"


def targets_dir(run_dir: Path) -> Path:
    """`<base>/prometheus/targets` for a run dir `<base>/runs/<name>`."""
    return Path(run_dir).parent.parent / TARGETS_DIR


def _doc(hosts: list[str], port: int, labels: dict[str, str]) -> str:
    return json.dumps([{"targets": [f"{h}:{port}" for h in hosts], "labels": labels}], indent=2) + "\n"


def write_job_targets(run_dir: Path, run_name: str, hosts: list[str], port: int, job_id: str | None = None) -> Path:
    """One file for a Slurm job: every node's rank 0 on `port` (the launcher calls this)."""
    labels = {"run": run_name, **({"slurm_job_id": str(job_id)} if job_id else {})}
    name = f"{run_name}--job-{job_id}.json" if job_id else f"{run_name}--job.json"
    return atomic_write(targets_dir(run_dir) / name, _doc(hosts, port, labels))


def write_self_target(run_dir: Path, run_name: str, host: str, port: int) -> Path:
    """One file per serving node (written by the exporter once its port is known)."""
    return atomic_write(targets_dir(run_dir) / f"{run_name}--{host}-{port}.json", _doc([host], port, {"run": run_name}))


def slurm_hosts(nodelist: str) -> list[str]:
    """Expand $SLURM_JOB_NODELIST (e.g. 'p5-[1-3,7]') with `scontrol show hostnames`."""
    import subprocess

    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True)
    return out.stdout.split()


def main(argv: list[str] | None = None) -> int:
    """`python -m mltrain.telemetry.file_sd RUN_DIR RUN_NAME PORT [HOSTS]` (the batch script's call) inside an allocation.

    HOSTS (comma-separated) is the expanded node list; without it $SLURM_JOB_NODELIST is expanded with
    scontrol (not available inside enroot containers, hence the argument)."""
    import os
    import sys

    args = sys.argv[1:] if argv is None else argv
    run_dir, run_name, port = Path(args[0]), args[1], int(args[2])
    if len(args) > 3 and args[3].strip(","):
        hosts = [h for h in args[3].split(",") if h]
    else:
        hosts = slurm_hosts(os.environ["SLURM_JOB_NODELIST"])
    path = write_job_targets(run_dir, run_name, hosts, port, os.environ.get("SLURM_JOB_ID"))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
