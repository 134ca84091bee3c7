"""mltrain's Slurm launcher on a REAL Slurm 22.05 (scripts/local-slurm/up.sh: node1 + node2 on 127.0.0.1,
8 fake GPUs each). Part 1: every shipped cluster spec's script passes `sbatch --test-only`. Part 2:
end-to-end training jobs (tiny model, 2 nodes x 1 CPU process, gloo) through `mltrain submit`:
done, USR1 preemption -> requeue -> identical losses, SIGKILLed rank, hang, bad config, cancel.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from slurm_fixture import job_field, job_state, wait_job

from mltrain.cluster.spec import load_cluster_spec
from mltrain.launch.slurm import prepare_submission

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "configs" / "clusters").glob("*.yaml") if not p.stem.startswith("eks-"))  # k8s: EKS
GOLDEN_RUN = ROOT / "tests" / "golden" / "sbatch" / "run.yaml"
TRAINER_READY = all(importlib.util.find_spec(m) is not None for m in ("mltrain.train.trainer", "mltrain.data.prepare"))


# ------------------------------------------------------------------ part 1: sbatch --test-only


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_passes_sbatch_test_only(local_slurm: Path, spec: Path, tmp_path: Path) -> None:
    """The script exactly as rendered for the spec, except --nodes capped at the 2 local nodes. Container
    image, mounts and /fsx paths stay: --test-only checks the #SBATCH request (partition, GPUs per node,
    exclusive, time), not the srun line or output paths."""
    nodes = min(2, load_cluster_spec(spec).nodes)
    sub = prepare_submission(GOLDEN_RUN, spec, nodes=nodes, hyperpod=False)
    script = tmp_path / "job.sbatch"
    script.write_text(sub.script)
    p = subprocess.run(["sbatch", "--test-only", str(script)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "to start at" in p.stderr and f"in partition {sub.cluster.slurm.partition}" in p.stderr


def test_test_only_rejects_impossible_requests(local_slurm: Path, tmp_path: Path) -> None:
    """EnforcePartLimits=ALL: the same check fails for more nodes or GPUs than the cluster has."""
    sub = prepare_submission(GOLDEN_RUN, ROOT / "configs/clusters/p5-16.yaml", nodes=2, hyperpod=False)
    script = tmp_path / "job.sbatch"
    script.write_text(sub.script)
    for extra in (["--nodes=3"], ["--gpus-per-node=9"]):
        p = subprocess.run(["sbatch", "--test-only", *extra, str(script)], capture_output=True, text=True)
        assert p.returncode != 0, (extra, p.stderr)


def test_straggler_rank_is_killed_after_exit_grace(local_slurm: Path, tmp_path: Path) -> None:
    """The real batch script with the torchrun line swapped for a stand-in: rank 0 writes `done` and exits,
    rank 1 hangs on (ignoring SIGTERM, like a rank stuck in teardown). The step is killed after exit_grace_s
    and the job still ends COMPLETED, not held until its time limit."""
    spec = tmp_path / "local.yaml"
    spec.write_text(
        (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {tmp_path}")
    )
    sub = prepare_submission(GOLDEN_RUN, spec)
    a, b = sub.script.index("  torchrun --nnodes"), sub.script.index("  2> >(tee")
    stand_in = (
        '  bash -c \'if [ $SLURM_PROCID = 0 ]; then echo done > "$0"; else trap "" TERM; sleep 300; fi\' '
        f"{sub.run_dir}/control/exit_reason \\\n"
    )
    script = sub.script[:a] + stand_in + sub.script[b:]
    (sub.run_dir / "slurm").mkdir(parents=True)
    path = sub.run_dir / "slurm" / "job.sbatch"
    path.write_text(script)
    job = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert wait_job(job, 120, release_requeued=False) == "COMPLETED"
    out = (sub.run_dir / "slurm" / f"{job}.out").read_text()
    assert "ranks still running 10 s after exit_reason=done: killing the step" in out
    assert "training finished" in out


# ------------------------------------------------------------------ part 2: end-to-end training jobs

RUN_TEMPLATE = """
name: ref
base_dir: .
seed: 7
model: {{preset: tiny, n_layers: 2, hidden_size: 64, n_heads: 4, n_kv_heads: 2, ffn_hidden_size: 128,
        vocab_size: 1024}}
data: {{sources: ["builtin:python-stdlib"], dir: {data}, max_source_bytes: 300000, shard_tokens: 65536}}
train: {{parallel: ddp, device: cpu, seq_len: 32, micro_batch_size: 4, max_steps: 120, warmup_steps: 2,
        eval_every: 0, log_every: 1, tensorboard: false}}
checkpoint: {{every_steps: 10, keep_last: 3}}
launch: {{max_restarts: 2, requeue_grace_s: 60}}
"""

e2e = pytest.mark.skipif(
    not TRAINER_READY, reason="waits for the integrator's trainer (mltrain.train.trainer, mltrain.data.prepare)"
)


class Env:
    """A work dir with prepared data, a run config and a local cluster spec whose runs live in it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.run_yaml = root / "run.yaml"
        self.run_yaml.write_text(RUN_TEMPLATE.format(data=root / "data"))
        spec = (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {root}")
        self.cluster = root / "local.yaml"
        self.cluster.write_text(spec)

    def mltrain(self, *args: str, env: dict[str, str] | None = None, check: bool = True) -> str:
        p = subprocess.run(
            [sys.executable, "-m", "mltrain", *args],
            cwd=self.root,
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200", **(env or {})},
            timeout=300,
        )
        if check:
            assert p.returncode == 0, f"mltrain {' '.join(args)}: {p.stdout}\n{p.stderr}"
        return p.stdout + p.stderr

    def submit(self, name: str, *sets: str, env: dict[str, str] | None = None) -> tuple[str, Path]:
        args = ["submit", str(self.run_yaml), "--cluster", str(self.cluster), "--set", f"name={name}"]
        for s in sets:
            args += ["--set", s]
        out = self.mltrain(*args, env=env)
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


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    if not TRAINER_READY:
        pytest.skip("waits for the integrator's trainer (mltrain.train.trainer, mltrain.data.prepare)")
    e = Env(tmp_path_factory.mktemp("slurm-e2e"))
    e.mltrain("data", "prepare", str(e.run_yaml))
    return e


@pytest.fixture(scope="module")
def reference(env: Env) -> dict[int, float]:
    """An uninterrupted 2-node run: the per-step losses every recovered run must reproduce."""
    job, run = env.submit("ref")
    assert wait_job(job, 240) == "COMPLETED", (run / "slurm" / f"{job}.err").read_text()[-3000:]
    losses = losses_by_step(run)
    assert sorted(losses) == list(range(1, 121))
    return losses


@e2e
@pytest.mark.slow
def test_two_node_job_done(env: Env, reference: dict[int, float]) -> None:
    run = env.root / "runs" / "ref"
    job = records(run / "slurm" / "jobs.jsonl")[0]
    out = (run / "slurm" / f"{job['job_id']}.out").read_text()
    assert "start on node[1-2]" in out and "rendezvous at node1:29500" in out and "training finished" in out
    (start,) = starts(run)
    assert start["world_size"] == 2 and start["step"] == 0
    assert job_state(job["job_id"])[0] == "COMPLETED" and job_field(job["job_id"], "Restarts") == "0"
    assert (run / "control" / "exit_reason").read_text().strip() == "done"
    assert not (run / "restarts.jsonl").exists()
    assert "training finished" in env.mltrain("logs", str(run))
    status = env.mltrain("status", str(run))
    assert "COMPLETED" in status and "120/120" in status and "done" in status


@e2e
@pytest.mark.slow
def test_usr1_preemption_requeues_and_resumes_identically(env: Env, reference: dict[int, float]) -> None:
    job, run = env.submit("preempt")
    wait_step(run, 15)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    assert wait_job(job, 240) == "COMPLETED"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("preempted", "requeue", False)
    first, second = starts(run)
    assert second["step"] == rec["resume_step"] >= 15 and second["restart_count"] == 1
    assert job_field(job, "Restarts") == "1"
    assert losses_by_step(run) == reference  # exactly: same data order, RNG and weights after resume


@e2e
@pytest.mark.slow
def test_killed_rank_fails_fast_requeues_and_resumes(env: Env, reference: dict[int, float]) -> None:
    job, run = env.submit("kill", env={"MLTRAIN_FAULT": "kill:25:1"})
    assert wait_job(job, 240) == "COMPLETED"
    (rec,) = records(run / "restarts.jsonl")
    assert rec["cause"] in ("lost_rank", "failed") and rec["action"] == "requeue" and rec["counted"] is True
    assert rec["resume_step"] == 20  # checkpoint every 10 steps, rank 1 killed at step 25
    first, second = starts(run)
    assert second["step"] == 20
    # fails fast: from the last step before the kill to the requeue decision
    last_before = max(
        r["time"] for r in records(run / "metrics.jsonl") if r.get("kind") == "train" and r["time"] < second["time"]
    )
    print(f"killed rank -> requeue decision in {rec['time'] - last_before:.1f} s")
    assert rec["time"] - last_before < 60
    assert losses_by_step(run) == reference


@e2e
@pytest.mark.slow
def test_hang_dumps_stacks_and_requeues(env: Env, reference: dict[int, float]) -> None:
    job, run = env.submit("hang", "train.hang_timeout_s=5", env={"MLTRAIN_FAULT": "hang:25:1"})
    assert wait_job(job, 240) == "COMPLETED"
    dumps = list((run / "hangs").glob("rank*-*.txt"))
    assert dumps and any("Thread" in d.read_text() or "File" in d.read_text() for d in dumps)
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"]) == ("hang", "requeue")
    assert starts(run)[-1]["step"] == rec["resume_step"] == 20
    assert losses_by_step(run) == reference


@e2e
@pytest.mark.slow
def test_bad_config_is_not_requeued_and_status_says_why(env: Env) -> None:
    job, run = env.submit("bad", f"data.dir={env.root / 'no-such-data'}")
    assert wait_job(job, 120, release_requeued=False) == "FAILED"
    assert job_field(job, "Restarts") == "0" and job_field(job, "ExitCode") == "2:0"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"]) == ("config_error", "none")
    status = env.mltrain("status", str(run))
    assert "stopped: config error, not requeued" in status and "no-such-data" in status
    from mltrain.launch.status import run_status

    assert run_status(run).explanation.startswith("stopped: config error, not requeued: ")


@e2e
@pytest.mark.slow
def test_cancel_is_not_requeued(env: Env) -> None:
    job, run = env.submit("cancel", "train.max_steps=100000")
    wait_step(run, 2)
    assert "will not be requeued" in env.mltrain("cancel", str(run))
    assert wait_job(job, 120, release_requeued=False) == "CANCELLED"
    time.sleep(1)
    assert job_state(job)[0] == "CANCELLED" and job_field(job, "Restarts") == "0"
    assert [r["event"] for r in records(run / "slurm" / "jobs.jsonl")] == ["submit", "cancel"]
