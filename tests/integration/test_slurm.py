"""mltrain's Slurm launcher on a REAL Slurm 22.05 (scripts/local-slurm/up.sh: node1..node3 on 127.0.0.1,
8 fake GPUs each). Part 1: every shipped cluster spec's script passes `sbatch --test-only`. Part 2:
end-to-end training jobs (tiny model, 2 nodes x 1 CPU process, gloo) through `mltrain submit`:
done, USR1 preemption -> requeue -> identical losses, hang with stack dumps, bad config, cancel.
Failures, node loss, Slurm's own requeues and time limits: test_slurm_recovery.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from slurm_fixture import (
    Env,
    job_field,
    job_state,
    losses_by_step,
    make_env,
    records,
    starts,
    wait_job,
    wait_step,
)

from mltrain.cluster.spec import load_cluster_spec
from mltrain.launch.slurm import install_batch_helper, prepare_submission

pytestmark = pytest.mark.slurm

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = sorted(p for p in (ROOT / "configs" / "clusters").glob("*.yaml") if not p.stem.startswith("eks-"))  # k8s: EKS
GOLDEN_RUN = ROOT / "tests" / "golden" / "sbatch" / "run.yaml"


# ------------------------------------------------------------------ part 1: sbatch --test-only


@pytest.mark.parametrize("spec", SHIPPED, ids=lambda p: p.stem)
def test_shipped_spec_passes_sbatch_test_only(local_slurm: Path, spec: Path, tmp_path: Path) -> None:
    """The script exactly as rendered for the spec, except --nodes capped at the 2 local nodes. Container
    image, mounts and /fsx paths stay: --test-only checks the #SBATCH request (partition, GPUs per node,
    exclusive, time), not the srun line or output paths."""
    nodes = min(3, load_cluster_spec(spec).nodes)
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
    for extra in (["--nodes=4"], ["--gpus-per-node=9"]):
        p = subprocess.run(["sbatch", "--test-only", *extra, str(script)], capture_output=True, text=True)
        assert p.returncode != 0, (extra, p.stderr)


EXIT_GRACE_S = 3  # the spec's grace, shortened: the straggler is killed after it, not after a fixed 10 s


def test_straggler_rank_is_killed_after_exit_grace(local_slurm: Path, tmp_path: Path) -> None:
    """The real batch script with the torchrun line swapped for a stand-in: rank 0 writes `done` and exits,
    rank 1 hangs on (ignoring SIGTERM, like a rank stuck in teardown). The step is killed after exit_grace_s
    and the job still ends COMPLETED, not held until its time limit."""
    spec = tmp_path / "local.yaml"
    text = (ROOT / "configs/clusters/local.yaml").read_text().replace("run_base_dir: .", f"run_base_dir: {tmp_path}")
    assert "exit_grace_s: 10" in text
    spec.write_text(text.replace("exit_grace_s: 10", f"exit_grace_s: {EXIT_GRACE_S}"))
    sub = prepare_submission(GOLDEN_RUN, spec)
    end = ' -m mltrain train "$CONFIG" &\n'
    a, b = sub.script.index("    bash -c 'exec"), sub.script.index(end) + len(end)
    stand_in = (
        '    bash -c \'if [ $SLURM_PROCID = 0 ]; then echo done > "$0"; else trap "" TERM; sleep 300; fi\' '
        f"{sub.run_dir}/control/exit_reason &\n"
    )
    script = sub.script[:a] + stand_in + sub.script[b:]
    install_batch_helper(sub.run_dir)  # what submit writes beside the script: its decisions and records
    path = sub.run_dir / "slurm" / "job.sbatch"
    path.write_text(script)
    job = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    assert wait_job(job, 120) == "COMPLETED"
    out = (sub.run_dir / "slurm" / f"{job}.out").read_text()
    assert f"ranks still running {EXIT_GRACE_S} s after exit_reason=done: killing the step" in out
    assert "training finished" in out


# ------------------------------------------------------------------ part 2: end-to-end training jobs


@pytest.fixture(scope="module")
def env(local_slurm: Path, tmp_path_factory: pytest.TempPathFactory) -> Env:
    return make_env(tmp_path_factory, "slurm-e2e")


@pytest.fixture(scope="module")
def reference(env: Env) -> dict[int, float]:
    """An uninterrupted 2-node run: the per-step losses every recovered run must reproduce."""
    job, run = env.submit("ref")
    assert wait_job(job, 240) == "COMPLETED", (run / "slurm" / f"{job}.err").read_text()[-3000:]
    losses = losses_by_step(run)
    assert sorted(losses) == list(range(1, 41))
    return losses


@pytest.mark.slow
def test_two_node_job_done(env: Env, reference: dict[int, float]) -> None:
    run = env.root / "runs" / "ref"
    job = records(run / "slurm" / "jobs.jsonl")[0]
    jid = job["job_id"]
    out = (run / "slurm" / f"{jid}.out").read_text()
    # a port the first node's OS handed out (free when chosen), not one derived from the job id
    ports = [int(p) for p in re.findall(r"rendezvous at node1:(\d+) \(run \d+\)", out)]
    assert "start on node[1-2]" in out and len(ports) == 1 and "training finished" in out, out[-2000:]
    assert 1024 < ports[0] < 65536
    (start,) = starts(run)
    assert start["world_size"] == 2 and start["step"] == 0
    assert job_state(jid)[0] == "COMPLETED" and job_field(jid, "Restarts") == "0"
    assert (run / "control" / "exit_reason").read_text().strip() == "done"
    assert not (run / "restarts.jsonl").exists()
    begin, end = records(run / "slurm" / "allocations.jsonl")
    assert (begin["event"], begin["job_id"], begin["nodes"], begin["time_limit_s"]) == (
        "start",
        jid,
        ["node1", "node2"],
        1800,
    )
    assert end["event"] == "end" and end["time"] > begin["time"]
    assert "training finished" in env.mltrain("logs", str(run))
    status = env.mltrain("status", str(run))
    assert "COMPLETED" in status and "40/40" in status and "done" in status


@pytest.mark.slow
def test_usr1_preemption_requeues_and_resumes_identically(env: Env, reference: dict[int, float]) -> None:
    job, run = env.submit("preempt", env={"MLTRAIN_FAULT": "wait:16:0"})  # rank 0 waits before step 16 for USR1
    wait_step(run, 15)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    assert wait_job(job, 240) == "COMPLETED"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("preempted", "requeue", False)
    assert rec["slurm_restart_count"] is None and rec["attempt"] == 0
    first, second = starts(run)
    assert second["step"] == rec["step"] >= 15 and second["restart_count"] == 1
    assert job_field(job, "Restarts") == "1"
    out = (run / "slurm" / f"{job}.out").read_text()
    assert "released the requeue hold" in out  # the script's own release, not Slurm's ~2 min BeginTime
    assert losses_by_step(run) == reference  # exactly: same data order, RNG and weights after resume


@pytest.mark.slow
def test_hang_dumps_stacks_and_requeues(env: Env, reference: dict[int, float]) -> None:
    job, run = env.submit("hang", "train.hang_timeout_s=5", env={"MLTRAIN_FAULT": "hang:25:1"})
    assert wait_job(job, 240) == "COMPLETED"
    dumps = list((run / "hangs").glob("rank*-*.txt"))
    assert dumps and any("Thread" in d.read_text() or "File" in d.read_text() for d in dumps)
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("hang", "requeue", True)
    assert starts(run)[-1]["step"] == rec["step"] == 20
    # the stuck rank (1: the one whose stack is not waiting for its peers) and its node, from torchrun's report
    # of that node
    logs = {p.name.rsplit(".", 2)[-2]: p.read_text() for p in (run / "slurm").glob(f"torchrun-{job}-0-0.*.log")}
    stuck = [n for n, text in logs.items() if re.search(r"rank *: 1 \(local_rank", text)]
    assert rec["node"] is not None and [rec["node"]] == stuck, (rec, list(logs))
    assert job_field(job, "Restarts") == "1"
    assert losses_by_step(run) == reference


@pytest.mark.slow
def test_bad_config_is_refused_at_submit(env: Env) -> None:
    """A data dir without a manifest fails the trainer's precheck: submit says so and queues nothing."""
    p = env.run_mltrain(*env.submit_args("bad", f"data.dir={env.root / 'no-such-data'}"))
    assert p.returncode != 0 and "no-such-data" in p.stderr + p.stdout and "Traceback" not in p.stderr
    assert "no prepared data" in p.stderr + p.stdout
    assert not (env.root / "runs" / "bad" / "slurm" / "jobs.jsonl").exists()


@pytest.mark.slow
def test_config_error_at_start_is_not_requeued_and_status_says_why(env: Env, tmp_path: Path) -> None:
    """Data that vanishes between submit and start: the job's precheck fails, nothing is requeued. One node: the
    batch script's verdict on the trainer's exit reason does not depend on the node count (half the torch starts)."""
    data = tmp_path / "data"
    shutil.copytree(env.data, data)
    job, run = env.submit("bad-start", f"data.dir={data}", env={"SBATCH_HOLD": "1"}, args=("--nodes", "1"))  # held
    shutil.rmtree(data)
    subprocess.run(["scontrol", "release", job], check=True)
    assert wait_job(job, 120) == "FAILED"
    assert job_field(job, "Restarts") == "0" and job_field(job, "ExitCode") == "2:0"
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"]) == ("config_error", "none")
    status = env.mltrain("status", str(run))
    assert "stopped: config error, not requeued" in status
    from mltrain.launch.status import run_status

    assert run_status(run).explanation.startswith("stopped: config error, not requeued: ")


@pytest.mark.slow
def test_cancel_is_not_requeued(env: Env) -> None:
    """scancel reaches the batch script as SIGTERM: it records `cancelled` and does not requeue."""
    job, run = env.submit("cancel", "train.max_steps=100000")
    wait_step(run, 2)
    assert "will not be requeued" in env.mltrain("cancel", str(run))
    assert wait_job(job, 120) == "CANCELLED"
    time.sleep(1)
    assert job_state(job)[0] == "CANCELLED" and job_field(job, "Restarts") == "0"
    assert [r["event"] for r in records(run / "slurm" / "jobs.jsonl")] == ["submit", "cancel"]
    deadline = time.monotonic() + 30  # written once the ranks' stop checkpoint is committed
    while not records(run / "restarts.jsonl") and time.monotonic() < deadline:
        time.sleep(0.2)
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("cancelled", "none", False)
    assert "SIGTERM: cancelled; action: none" in (run / "slurm" / f"{job}.out").read_text()
    from mltrain.launch.status import run_status

    # the step committed by the trainer's SIGTERM checkpoint, the same step status shows (not the checkpoint
    # before it, nor null)
    st = run_status(run)
    exit_rec = [r for r in records(run / "metrics.jsonl") if r.get("kind") == "exit"][-1]
    assert rec["step"] == rec["resume_step"] == st.ckpt_step == st.step == exit_rec["step"], (rec, st)
    assert st.explanation == f"cancelled with mltrain cancel; a new submit resumes from step {rec['step']}"
