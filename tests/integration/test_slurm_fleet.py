"""A fleet of two tiny models on the REAL local Slurm (3 nodes, 1 CPU process per node, gloo): `mltrain fleet
submit` plans a on 1 node and b on 2; a finishes; `mltrain fleet rebalance --apply` stops b at a checkpoint and
resubmits it on 3 nodes. b's losses step for step are those of one uninterrupted process with the same global
batch, every step trained once, the loader's global sample position exact at every checkpoint, and the fleet
record says 3 nodes.

b's global batch is 6 sequences (micro batch 1): 2 ranks x accum 3 before the move, 3 ranks x accum 2 after it,
1 process x accum 6 for the reference.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from slurm_fixture import (
    ROOT,
    records,
    starts,
    wait_job,
    wait_step,
)
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# the same tolerance, for the same reason, as test_train_torchrun.py's world-size resume: another number of ranks
# sums the same fp32 gradients in another order; one skipped or repeated batch moves a loss by > 1e-3 relative
LOSS_RTOL = 1e-5
A_STEPS, B_STEPS = 3, 10
B_STOP = 5  # b's rank 0 waits before this step until a stop request arrives: the move lands mid-run, every time
GLOBAL_BATCH = 6
TINY = {"preset": "tiny", "vocab_size": 1024, "hidden_size": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2,
        "ffn_hidden_size": 128}  # fmt: skip


def _run_yaml(root: Path, data: Path, name: str, steps: int, accum: int) -> Path:
    cfg = tiny_run_config(root, data, name, micro_batch_size=1, grad_accum_steps=accum, max_steps=steps)
    cfg["train"]["device"] = "cpu"
    cfg["checkpoint"] = {"every_steps": 100, "keep_last": 2}  # only the stop's and the final checkpoint
    return write_config(root / f"{name}.yaml", cfg)


def _files(root: Path, data: Path) -> tuple[Path, Path]:
    """The fleet file (instance type `local`, 1 accelerator per node; b has 4x a's tokens, so the min-makespan
    split of 3 nodes gives a 1 and b 2) and the local test cluster's spec with its 3 nodes."""
    fleet = {
        "cluster": {"instance_type": "local", "nodes": 3, "price_per_node_hour": 39.80},
        "instance_types": {"local": {"accelerators": 1, "accelerator": "cpu", "gpu_memory_gib": 64, "vcpus": 2,
                                     "memory_gib": 8, "network_gbps": 10, "efa_interfaces": 0,
                                     "peak_bf16_tflops": 0.1}},
        "models": [
            {"name": "a", "arch": TINY, "tokens": 1e6, "seq_len": 32, "mfu": 0.5, "max_nodes": 1,
             "run_config": str(_run_yaml(root, data, "fa", A_STEPS, GLOBAL_BATCH))},
            {"name": "b", "arch": TINY, "tokens": 4e6, "seq_len": 32, "mfu": 0.5,
             "run_config": str(_run_yaml(root, data, "fb", B_STEPS, GLOBAL_BATCH // 2))},
        ],
    }  # fmt: skip
    fleet_yaml = root / "fleet.yaml"
    fleet_yaml.write_text(yaml.safe_dump(fleet))
    spec = (ROOT / "configs/clusters/local.yaml").read_text()
    spec = spec.replace("run_base_dir: .", f"run_base_dir: {root}").replace("nodes: 2", "nodes: 3")
    assert "nodes: 3" in spec
    cluster = root / "local-3.yaml"
    cluster.write_text(spec)
    return fleet_yaml, cluster


def _mltrain(root: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    return subprocess.run(
        mltrain_cmd(*args), cwd=root, env={**base, "COLUMNS": "200", **(env or {})}, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def _squeue_state(job: str) -> str | None:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%T"], capture_output=True, text=True).stdout.strip()
    return out or None


def _check_fleet_status(root: Path, record: dict, runs: dict[str, Path], fleet: Path, cluster: Path) -> dict:
    """`mltrain fleet status --json` against the fleet record, the run records and squeue: each model's run dir,
    nodes and newest job are the record's, its step is the one its metrics reached, its Slurm state is what
    squeue says (asked just before and just after, so a job changing state in between is not a false alarm),
    and the idle nodes are the cluster's minus those of jobs that run or wait. Also checks the 80-column table."""
    before = {name: _squeue_state(rec["job_ids"][-1]) for name, rec in record["models"].items()}
    p = _mltrain(root, "fleet", "status", str(fleet), "--cluster", str(cluster), "--json")
    after = {name: _squeue_state(rec["job_ids"][-1]) for name, rec in record["models"].items()}
    assert p.returncode == 0, p.stdout + p.stderr
    got = json.loads(p.stdout)
    by_name = {m["name"]: m for m in got["models"]}
    assert set(by_name) == set(record["models"])
    held = 0
    for name, rec in record["models"].items():
        m = by_name[name]
        assert Path(rec["run_dir"]) == runs[name] and Path(m["run_dir"]) == runs[name]
        jobs = [r["job_id"] for r in records(runs[name] / "slurm" / "jobs.jsonl") if r.get("event") == "submit"]
        assert rec["job_ids"] == jobs, (name, rec["job_ids"], jobs)
        assert m["job_id"] == jobs[-1] and m["nodes"] == rec["nodes"]
        assert m["slurm_state"] in {before[name], after[name]} or (
            before[name] is None and after[name] is None and m["slurm_state"] in (None, "COMPLETED")
        ), (name, m["slurm_state"], before[name], after[name])
        trained = [x["step"] for x in _train(runs[name])]
        if m["step"] is not None:  # a step read a moment before or after the train record we read
            assert not trained or abs(m["step"] - max(trained)) <= 1, (name, m["step"], max(trained))
        if m["state"] in ("running", "pending", "requeued"):
            held += rec["nodes"]
    assert got["totals"]["cluster_nodes"] == 3 and got["totals"]["price_per_node_hour"] == 39.80
    spent = (got["now"] - record["submitted_at"]) / 3600 * 3 * 39.80  # the whole cluster, from the fleet's submit
    assert got["totals"]["dollars_spent"] == pytest.approx(spent, abs=0.02), got["totals"]
    assert got["totals"]["nodes_idle"] == 3 - held, got["totals"]
    table = _mltrain(root, "fleet", "status", str(fleet), "--cluster", str(cluster), env={"COLUMNS": "80"})
    assert table.returncode == 0 and all(len(line) <= 80 for line in table.stdout.splitlines()), table.stdout
    return got


def _train(run: Path) -> list[dict]:
    return [r for r in records(run / "metrics.jsonl") if r.get("kind") == "train"]


def _loader_samples(run: Path, step: int) -> int:
    state = json.loads((run / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
    assert state["loader"]["epoch"] == 0
    return state["loader"]["samples"]


def test_fleet_rebalance_gives_a_finished_models_node_to_the_other(
    local_slurm: Path, tmp_path: Path, tiny_data_dir: Path
) -> None:
    t0 = time.monotonic()
    fleet, cluster = _files(tmp_path, tiny_data_dir)
    p = _mltrain(tmp_path, "fleet", "submit", str(fleet), "--cluster", str(cluster),
                 env={"MLTRAIN_FAULT": f"wait:{B_STOP}:0"})  # fmt: skip
    assert p.returncode == 0, p.stdout + p.stderr
    assert "a: 1 nodes" in p.stdout and "b: 2 nodes" in p.stdout, p.stdout
    job_a, job_b = re.findall(r"submitted job (\d+)", p.stdout)
    run_a, run_b = tmp_path / "runs" / "fa", tmp_path / "runs" / "fb"
    record_path = tmp_path / "fleets" / "fleet.json"
    record = json.loads(record_path.read_text())
    assert {k: (v["nodes"], v["job_ids"]) for k, v in record["models"].items()} == {
        "a": (1, [job_a]), "b": (2, [job_b])
    }  # fmt: skip
    # the reference, alongside the jobs: one process, the same 6 sequences per step, no interruption
    ref_yaml = _run_yaml(tmp_path, tiny_data_dir, "ref", B_STEPS, GLOBAL_BATCH)
    # one thread, as each rank of the jobs (the cluster spec's OMP_NUM_THREADS): no threads spinning for cores
    # that the jobs use
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT", "SLURM_CONF")}
    env["OMP_NUM_THREADS"] = "1"
    ref_proc = subprocess.Popen(
        mltrain_cmd("train", str(ref_yaml)), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    _check_fleet_status(tmp_path, record, {"a": run_a, "b": run_b}, fleet, cluster)

    assert wait_job(job_a, 180) == "COMPLETED", (run_a / "slurm" / f"{job_a}.err").read_text()[-3000:]
    wait_step(run_b, B_STOP - 1, 180)  # b waits before B_STOP for the stop
    mid = _check_fleet_status(tmp_path, record, {"a": run_a, "b": run_b}, fleet, cluster)
    states = {m["name"]: m["state"] for m in mid["models"]}
    assert states == {"a": "done", "b": "running"} and mid["totals"]["nodes_idle"] == 1, mid
    print(_mltrain(tmp_path, "fleet", "status", str(fleet), "--cluster", str(cluster), env={"COLUMNS": "80"}).stdout)

    ref_out, _ = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_out[-3000:]
    ref = {x["step"]: x["loss"] for x in _train(tmp_path / "runs" / "ref")}
    assert sorted(ref) == list(range(1, B_STEPS + 1))

    # the proposal, then the move
    p = _mltrain(tmp_path, "fleet", "rebalance", str(fleet), "--cluster", str(cluster))
    assert p.returncode == 0, p.stdout + p.stderr
    row = next(line for line in p.stdout.splitlines() if line.startswith("b "))
    assert "2 -> 3" in row, p.stdout
    print("\n" + p.stdout)
    p = _mltrain(tmp_path, "fleet", "rebalance", str(fleet), "--cluster", str(cluster), "--apply")
    assert p.returncode == 0, p.stdout + p.stderr
    print(p.stdout)
    job_b2 = re.search(r"b: moved 2 -> 3 nodes at step (\d+): job (\d+)", p.stdout)
    assert job_b2 is not None, p.stdout
    stop_step, job_b2 = int(job_b2.group(1)), job_b2.group(2)
    assert wait_state_final(job_b, job_b2) == "COMPLETED", (run_b / "slurm" / f"{job_b2}.err").read_text()[-3000:]

    # the first job was not requeued: it exited at the stop; the second one resumed there on 3 ranks
    assert not [x for x in records(run_b / "restarts.jsonl") if x.get("action") == "requeue"]
    assert [(s["step"], s["world_size"]) for s in starts(run_b)] == [(0, 2), (stop_step, 3)]
    # every step trained once: steps 1..stop by the first job, stop+1..end by the second, none redone
    assert [x["step"] for x in _train(run_b)] == list(range(1, B_STEPS + 1))
    # the loader's global position: exactly step x global batch at the stop and at the end, as uninterrupted
    assert _loader_samples(run_b, stop_step) == stop_step * GLOBAL_BATCH
    assert _loader_samples(run_b, B_STEPS) == _loader_samples(tmp_path / "runs" / "ref", B_STEPS)
    got = {x["step"]: x["loss"] for x in _train(run_b)}
    for s in range(1, B_STEPS + 1):
        assert got[s] == pytest.approx(ref[s], rel=LOSS_RTOL), f"step {s}: loss {got[s]} vs {ref[s]}"

    record = json.loads(record_path.read_text())
    assert (record["models"]["b"]["nodes"], record["models"]["b"]["job_ids"]) == (3, [job_b, job_b2])
    assert record["models"]["a"]["nodes"] == 1
    (ev,) = record["events"]
    assert (ev["model"], ev["from"], ev["to"], ev["checkpoint_step"], ev["job_id"]) == ("b", 2, 3, stop_step, job_b2)
    end = _check_fleet_status(tmp_path, record, {"a": run_a, "b": run_b}, fleet, cluster)
    assert {m["name"]: (m["state"], m["step"]) for m in end["models"]} == {
        "a": ("done", A_STEPS),
        "b": ("done", B_STEPS),
    }
    print(_mltrain(tmp_path, "fleet", "status", str(fleet), "--cluster", str(cluster), env={"COLUMNS": "80"}).stdout)

    # a second --apply: b is done, a is done, nothing to move and nothing changes
    p = _mltrain(tmp_path, "fleet", "rebalance", str(fleet), "--cluster", str(cluster), "--apply")
    assert p.returncode == 0 and "nothing to move" in p.stdout, p.stdout + p.stderr
    assert json.loads(record_path.read_text()) == record
    print(f"fleet of 2 on 3 nodes, b moved 2 -> 3 at step {stop_step}: {time.monotonic() - t0:.1f} s")


def wait_state_final(old_job: str, new_job: str) -> str:
    """The stopped job has left the queue (rebalance waited for it); the resubmitted one runs to its end."""
    from slurm_fixture import job_state

    assert job_state(old_job)[0] in ("COMPLETED", ""), job_state(old_job)
    return wait_job(new_job, 240)
