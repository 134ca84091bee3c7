"""A real Slurm 22.05 on localhost for the tests: scripts/local-slurm/up.sh (2 fake-GPU nodes).

`local_slurm` (session fixture, registered in conftest.py) brings the cluster up once, exports
SLURM_CONF, and stops it at the end only if this session started it. Skips, with the reason,
only when the tests cannot run as root or Slurm is missing and apt-get is not available.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP = ROOT / "scripts" / "local-slurm" / "up.sh"
DOWN = ROOT / "scripts" / "local-slurm" / "down.sh"
SLURM_DIR = Path(os.environ.get("MLTRAIN_SLURM_DIR", "/tmp/mltrain-slurm"))
FINAL_STATES = {
    "COMPLETED",
    "FAILED",
    "CANCELLED",
    "TIMEOUT",
    "NODE_FAIL",
    "OUT_OF_MEMORY",
    "BOOT_FAIL",
    "DEADLINE",
    "PREEMPTED",
}


def _alive(pidfile: Path) -> bool:
    try:
        os.kill(int(pidfile.read_text().strip()), 0)
        return True
    except (OSError, ValueError):
        return False


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[Path]:
    """The slurm.conf of a running local cluster (SLURM_CONF is exported for subprocesses)."""
    if os.geteuid() != 0:
        pytest.skip("local Slurm needs root (munged/slurmd); run the Slurm tests as root, e.g. in CI")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    started_here = not _alive(SLURM_DIR / "run" / "slurmctld.pid")
    env = {**os.environ, "MLTRAIN_SLURM_DIR": str(SLURM_DIR)}
    t0 = time.monotonic()
    p = subprocess.run(["bash", str(UP)], env=env, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"scripts/local-slurm/up.sh failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    print(f"\nlocal Slurm up in {time.monotonic() - t0:.1f} s (started here: {started_here})")
    conf = SLURM_DIR / "etc" / "slurm.conf"
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    yield conf
    if started_here and os.environ.get("MLTRAIN_SLURM_KEEP") != "1":
        subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def job_state(job_id: str) -> tuple[str, str]:
    """(JobState, Reason) from scontrol ('' when unknown)."""
    p = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    kv = dict(part.split("=", 1) for part in p.stdout.split() if "=" in part)
    return kv.get("JobState", ""), kv.get("Reason", "")


def job_field(job_id: str, key: str) -> str:
    p = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    kv = dict(part.split("=", 1) for part in p.stdout.split() if "=" in part)
    return kv.get(key, "")


def wait_job(job_id: str, timeout_s: float = 180.0, release_requeued: bool = True) -> str:
    """Wait for the job's final state. A requeued job waits ~2 min in PENDING(BeginTime) in Slurm 22.05;
    release it like an operator would: 1.5 s later (sooner is "Job credential revoked"), StartTime=now."""
    deadline = time.monotonic() + timeout_s
    last_release = 0.0
    while time.monotonic() < deadline:
        state, reason = job_state(job_id)
        if state in FINAL_STATES:
            return state
        if release_requeued and state == "PENDING" and reason == "BeginTime" and time.monotonic() - last_release > 5:
            time.sleep(1.5)
            subprocess.run(["scontrol", "update", f"jobid={job_id}", "StartTime=now"], capture_output=True)
            last_release = time.monotonic()
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s (state {job_state(job_id)})")
