"""A real Slurm 22.05 on localhost for the tests: scripts/local-slurm/up.sh (3 fake-GPU nodes; jobs
use 2, so a spare exists for node exclusion).

`local_slurm` (session fixture, registered in conftest.py) brings the cluster up once, exports
SLURM_CONF, and stops it at the end only if this session started it. The state dir and the ports
are per checkout (scripts/local-slurm/common.sh hashes the repo path), so two checkouts testing at
once run two clusters. Skips, with the reason, only when the tests cannot run as root or Slurm is
missing and apt-get is not available.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UP = ROOT / "scripts" / "local-slurm" / "up.sh"
DOWN = ROOT / "scripts" / "local-slurm" / "down.sh"
COMMON = ROOT / "scripts" / "local-slurm" / "common.sh"


def _checkout_settings() -> dict[str, str]:
    """MLTRAIN_SLURM_DIR, CTLD_PORT, NODE_PORT_BASE, NNODES for this checkout (env overrides win)."""
    out = subprocess.run(["bash", str(COMMON)], capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


SETTINGS = _checkout_settings()
SLURM_DIR = Path(SETTINGS["MLTRAIN_SLURM_DIR"])
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


def daemon_alive(pidfile: Path) -> bool:
    """The daemon whose pid is in `pidfile` runs; for users/<pid> files, the name is the pid."""
    try:
        pid = int(pidfile.name) if pidfile.name.isdigit() else int(pidfile.read_text().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


def up() -> None:
    """scripts/local-slurm/up.sh: starts whatever daemon of the local cluster is not running, waits until ready."""
    p = subprocess.run(["bash", str(UP)], env={**os.environ, **SETTINGS}, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        pytest.fail(f"scripts/local-slurm/up.sh failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")


@pytest.fixture(scope="session")
def local_slurm() -> Iterator[Path]:
    """The slurm.conf of a running local cluster (SLURM_CONF is exported for subprocesses)."""
    if os.geteuid() != 0:
        pytest.skip("local Slurm needs root (munged/slurmd); run the Slurm tests as root, e.g. in CI")
    if not shutil.which("sbatch") and not shutil.which("apt-get"):
        pytest.skip("Slurm is not installed and apt-get is not available to install it")
    started_here = not daemon_alive(SLURM_DIR / "run" / "slurmctld.pid")
    env = {**os.environ, **SETTINGS}
    t0 = time.monotonic()
    up()
    print(f"\nlocal Slurm up in {time.monotonic() - t0:.1f} s (started here: {started_here})")
    conf = SLURM_DIR / "etc" / "slurm.conf"
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(conf)
    # sessions using this cluster (pytest-xdist workers, a second pytest): the last one out stops it
    users = SLURM_DIR / "users"
    users.mkdir(exist_ok=True)
    started_by_tests = SLURM_DIR / "started-by-tests"
    if started_here:
        started_by_tests.touch()
    me = users / str(os.getpid())
    me.touch()
    yield conf
    me.unlink(missing_ok=True)
    others = [u for u in users.iterdir() if daemon_alive(u)]
    if not others and started_by_tests.exists() and os.environ.get("MLTRAIN_SLURM_KEEP") != "1":
        started_by_tests.unlink(missing_ok=True)
        subprocess.run(["bash", str(DOWN)], env=env, capture_output=True, timeout=120)
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


def _queued() -> list[str]:
    """The ids of the jobs in the queue (pending, running, completing)."""
    out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture
def no_leftover_jobs(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For every test marked slurm (tests/integration/conftest.py): after each test, the jobs it submitted
    (their logs under this session's temp dir) that are still queued are cancelled, so a failed test's job cannot go on requeueing
    itself on the nodes the next test needs. Jobs of other sessions sharing the cluster are left alone."""
    base = str(tmp_path_factory.getbasetemp())
    before = set(_queued())
    yield
    for job in _queued():
        if job not in before and job_field(job, "StdOut").startswith(base):
            subprocess.run(["scancel", job], capture_output=True)


def job_state(job_id: str) -> tuple[str, str]:
    """(JobState, Reason) from scontrol ('' when unknown)."""
    p = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    kv = dict(part.split("=", 1) for part in p.stdout.split() if "=" in part)
    return kv.get("JobState", ""), kv.get("Reason", "")


def job_field(job_id: str, key: str) -> str:
    p = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True)
    kv = dict(part.split("=", 1) for part in p.stdout.split() if "=" in part)
    return kv.get(key, "")


def wait_job(job_id: str, timeout_s: float = 180.0) -> str:
    """Wait for the job's final state. The batch script releases its own requeue hold (BeginTime) once
    the old allocation has finished; nothing here releases it, so a test sees the real recovery time."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, _ = job_state(job_id)
        if state in FINAL_STATES:
            return state
        time.sleep(0.2)
    raise AssertionError(f"job {job_id} not finished after {timeout_s} s (state {job_state(job_id)})")


def wait_state(job_id: str, want: set[str], timeout_s: float = 60.0) -> str:
    """Wait until the job's JobState is one of `want` (e.g. RUNNING after a requeue)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state, _ = job_state(job_id)
        if state in want:
            return state
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} not in {want} after {timeout_s} s (state {job_state(job_id)})")


# ------------------------------------------------------------------ end-to-end helpers (test_slurm*.py)

RUN_TEMPLATE = """
name: ref
base_dir: .
seed: 7
model: {{preset: tiny, n_layers: 2, hidden_size: 64, n_heads: 4, n_kv_heads: 2, ffn_hidden_size: 128,
        vocab_size: 1024}}
data: {{sources: ["builtin:python-stdlib"], dir: {data}, max_source_bytes: 300000, shard_tokens: 65536}}
train: {{parallel: ddp, device: cpu, seq_len: 32, micro_batch_size: 4, max_steps: 40, warmup_steps: 2,
        eval_every: 0, log_every: 1, tensorboard: false}}
checkpoint: {{every_steps: 10, keep_last: 3}}
launch: {{max_restarts: 2, requeue_grace_s: 60}}
"""


class Env:
    """A work dir with a run config on prepared data and a local cluster spec whose runs live in it."""

    def __init__(self, root: Path, data: Path) -> None:
        self.root = root
        self.data = data
        self.run_yaml = root / "run.yaml"
        self.run_yaml.write_text(RUN_TEMPLATE.format(data=data))
        spec = (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {root}")
        self.cluster = root / "local.yaml"
        self.cluster.write_text(spec)

    def mltrain(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        p = self.run_mltrain(*args, env=env)
        if check:
            assert p.returncode == 0, f"mltrain {' '.join(args)}: {p.stdout}\n{p.stderr}"
        return p.stdout + p.stderr

    def run_mltrain(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "mltrain", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
            timeout=300,
        )

    def submit_args(self, name: str, *sets: str) -> list[str]:
        args = ["submit", str(self.run_yaml), "--cluster", str(self.cluster), "--set", f"name={name}"]
        for s in sets:
            args += ["--set", s]
        return args

    def submit(
        self, name: str, *sets: str, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
    ) -> tuple[str, Path]:
        out = self.mltrain(*self.submit_args(name, *sets), *args, env=env)
        job_id = out.split("submitted job ", 1)[1].split(":", 1)[0]
        return job_id, self.root / "runs" / name


def records(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.exists() else []


def losses_by_step(run: Path) -> dict[int, float]:
    """The loss of every step in the run's final history: a resumed attempt overwrites the steps it redid."""
    out: dict[int, float] = {}
    for r in records(run / "metrics.jsonl"):
        if r.get("kind") == "train":
            out[int(r["step"])] = r["loss"]
    return out


def starts(run: Path) -> list[dict]:
    return [r for r in records(run / "metrics.jsonl") if r.get("kind") == "start"]


def wait_step(run: Path, step: int, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if any(r.get("kind") == "train" and r["step"] >= step for r in records(run / "metrics.jsonl")):
            return
        time.sleep(0.05)
    raise AssertionError(f"{run}: step {step} not reached in {timeout_s} s")


def first_step_after(run: Path, t: float) -> float:
    """Time of the first train record written after `t` (the first step after a resume)."""
    return min(r["time"] for r in records(run / "metrics.jsonl") if r.get("kind") == "train" and r["time"] > t)


_PREPARED: dict[str, Path] = {}


def make_env(tmp_path_factory: pytest.TempPathFactory, name: str) -> Env:
    """An Env under a new dir `name`. The data of RUN_TEMPLATE is prepared once per session and shared by every
    module's Env: runs only read it (a test that removes data works on its own copy)."""
    if "data" not in _PREPARED:
        root = tmp_path_factory.mktemp("slurm-data")
        prep = Env(root, root / "data")
        prep.mltrain("data", "prepare", str(prep.run_yaml))
        _PREPARED["data"] = prep.root / "data"
    return Env(tmp_path_factory.mktemp(name), _PREPARED["data"])


def write_figures(figures: dict[str, float]) -> None:
    """Merge recovery-time figures into $MLTRAIN_SLURM_BENCH_JSON (several test files add to it)."""
    out = os.environ.get("MLTRAIN_SLURM_BENCH_JSON")
    if not out or not figures:
        return
    path = Path(out)
    old = json.loads(path.read_text()) if path.exists() else {}
    path.write_text(json.dumps({**old, **figures}, indent=1, sort_keys=True) + "\n")
