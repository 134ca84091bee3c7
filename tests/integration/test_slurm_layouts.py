"""A `parallel:` layout on a REAL Slurm 22.05 (scripts/local-slurm/up.sh): `mltrain submit` of the tiny model on
2 nodes x 2 CPU processes (gloo) with `parallel: {tp: 2, dp_shard: -1}`, i.e. tensor parallel 2 inside each node
and FSDP2 across the two nodes. Preempted with USR1 mid-run, requeued by its own batch script, resumed from the
stop checkpoint; every step's loss and gradient norm are those of one uninterrupted process.

What the run itself shows about its layout: the start records (world size 4, both attempts), rank 0's start
line (`parallel=dp_shard 2 x tp 2`), each node's torchrun agent log (LOGLEVEL=INFO: the global ranks it ran)
and the checkpoint's DCP metadata (which rank wrote which block of each weight). The local nodes all run on
this one machine, so a hostname cannot tell them apart: Slurm's node name (the torchrun log's file name) does.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest
from slurm_fixture import (
    ROOT,
    losses_by_step,
    records,
    starts,
    wait_job,
    wait_step,
)
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# The same tolerances as tests/integration/test_parallel_layouts.py, for the same reason: tensor parallel splits
# each matmul's inner sum over two ranks and FSDP reduce-scatters the gradients, so the layout sums the same fp32
# numbers as one process in another order. Losses agree to a few fp32 ulps per step (measured <= 1.5e-7 relative
# there over 12 AdamW steps), gradient norms to a few e-6 (a sum of squares over every parameter collects more
# reordering); this run measured 7e-8 and 4.2e-6. A different batch or a missing gradient reduction moves the
# loss by > 1e-3 relative.
LOSS_RTOL = 1e-5
GNORM_RTOL = 1e-4
STEPS = 8
STOP_AT = 4
# rank 0 waits before step STOP_AT until a stop is requested (at most 300 s), so the USR1 below lands mid-run
# however fast or loaded this machine is: the trainer finishes that step, checkpoints it and exits for requeue
FAULT = {"MLTRAIN_FAULT": f"wait:{STOP_AT}:0"}
WO = "model.layers.0.attention.wo.weight"  # RowwiseParallel: tp splits its input (column) dim


def _config(base: Path, data: Path, name: str, parallel: dict | None, accum: int) -> dict:
    """The tiny model (4 query / 2 KV heads: tp 2 divides both), a global batch of 8 sequences per step:
    micro batch 4 x 2 data-parallel ranks, or micro batch 4 x 2 accumulation steps on one process."""
    cfg = tiny_run_config(base, data, name, micro_batch_size=4, grad_accum_steps=accum, max_steps=STEPS)
    cfg["checkpoint"] = {"every_steps": 100, "keep_last": 2}  # only the stop and the final checkpoint
    if parallel is not None:
        cfg["parallel"] = parallel
    return cfg


def _cluster(root: Path) -> Path:
    """The local CPU cluster spec (configs/clusters/local.yaml) with 2 processes per node, runs under `root`."""
    text = (ROOT / "configs/clusters/local.yaml").read_text()
    text = text.replace("run_base_dir: .", f"run_base_dir: {root}").replace("nproc_per_node: 1", "nproc_per_node: 2")
    assert "nproc_per_node: 2" in text
    path = root / "local-2x2.yaml"
    path.write_text(text)
    return path


def _steps(run: Path) -> dict[int, tuple[float, float]]:
    """step -> (loss, grad norm); a step logged twice (resumed) keeps its later record."""
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in records(run / "metrics.jsonl") if r.get("kind") == "train"}


def _node_ranks(run: Path, job: str, attempt: int) -> dict[str, list[int]]:
    """Slurm node -> the global ranks its torchrun agent started (from the agent's rendezvous log line)."""
    out = {}
    for log in (run / "slurm").glob(f"torchrun-{job}-{attempt}-0.*.log"):
        node = log.name.rsplit(".", 2)[-2]
        found = re.findall(r"global_ranks=\[([\d, ]+)\]", log.read_text())
        assert len(found) == 1, (log, found)
        out[node] = [int(r) for r in found[0].split(",")]
    return out


def _wo_blocks(ckpt: Path) -> dict[int, tuple[int, ...]]:
    """rank -> the offsets of the block of WO it wrote, from the DCP metadata (files are `__<rank>_<n>.distcp`)."""
    from torch.distributed.checkpoint import FileSystemReader

    meta = FileSystemReader(str(ckpt)).read_metadata()
    blocks = {}
    for index, info in meta.storage_data.items():
        if index.fqn == WO:
            rank = int(re.fullmatch(r"__(\d+)_\d+\.distcp", info.relative_path).group(1))
            blocks[rank] = tuple(index.offset)
    return blocks


def test_tp_within_node_dp_across_nodes_preempted_and_resumed(
    local_slurm: Path, tmp_path: Path, tiny_data_dir: Path
) -> None:
    t0 = time.monotonic()
    cluster = _cluster(tmp_path)
    run_yaml = write_config(
        tmp_path / "run.yaml", _config(tmp_path, tiny_data_dir, "tp2x2", {"tp": 2, "dp_shard": -1}, accum=1)
    )
    # LOGLEVEL=INFO reaches each node's torchrun through sbatch and srun (they pass the environment on): its agent
    # then logs the global ranks it started into slurm/torchrun-<job>-<attempt>-<run>.<node>.log
    env = {**os.environ, "COLUMNS": "200", "LOGLEVEL": "INFO", **FAULT}
    p = subprocess.run(
        mltrain_cmd("submit", str(run_yaml), "--cluster", str(cluster)),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stdout + p.stderr
    assert "warning:" not in p.stdout + p.stderr  # the block fits the job's 2 x 2 ranks
    job = re.search(r"submitted job (\d+)", p.stdout).group(1)
    run = tmp_path / "runs" / "tp2x2"
    script = (run / "slurm" / "job.sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "--nproc-per-node=2" in script

    # the reference while the job starts: one process, no parallel: block, the same 8 sequences per step
    ref_yaml = write_config(tmp_path / "ref.yaml", _config(tmp_path, tiny_data_dir, "ref", None, accum=2))
    ref_env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT", "SLURM_CONF")}
    ref_env["OMP_NUM_THREADS"] = "1"  # as each rank of the job (the cluster spec's): no threads spinning for its cores
    r = subprocess.run(mltrain_cmd("train", str(ref_yaml)), env=ref_env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ref = _steps(tmp_path / "runs" / "ref")
    assert sorted(ref) == list(range(1, STEPS + 1))

    wait_step(run, STOP_AT - 1, 180)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], check=True)
    state = wait_job(job, 300)
    out = (run / "slurm" / f"{job}.out").read_text()
    assert state == "COMPLETED", out[-3000:] + (run / "slurm" / f"{job}.err").read_text()[-3000:]

    # stopped by the preemption, requeued (not counted), resumed from the stop checkpoint on the same layout
    (rec,) = records(run / "restarts.jsonl")
    assert (rec["cause"], rec["action"], rec["counted"]) == ("preempted", "requeue", False)
    first, second = starts(run)
    assert (first["step"], first["world_size"]) == (0, 4)
    assert (second["step"], second["world_size"], second["restart_count"]) == (rec["step"], 4, 1)
    assert rec["step"] == STOP_AT
    assert out.count("4 x cpu, parallel=dp_shard 2 x tp 2") == 2, out[-3000:]  # rank 0's line, each attempt

    # each node ran two consecutive global ranks, on both attempts: the mesh puts tp innermost, so a tp group
    # (ranks 0-1, 2-3) is one node and dp_shard spans the nodes
    for attempt in (0, 1):
        ranks = _node_ranks(run, job, attempt)
        assert sorted(ranks) == ["node1", "node2"], ranks
        assert sorted(map(sorted, ranks.values())) == [[0, 1], [2, 3]], ranks

    # what the ranks held, from the final checkpoint: wo is (hidden, n_heads x head_dim) = (64, 64), sharded
    # rows by dp_shard (FSDP2) and columns by tp. The two ranks of a node wrote the same rows and different
    # columns (a tp group); the two nodes wrote different rows (the data-parallel shards).
    blocks = _wo_blocks(run / "checkpoints" / f"step_{STEPS:08d}")
    assert blocks == {0: (0, 0), 1: (0, 32), 2: (32, 0), 3: (32, 32)}, blocks

    # step for step the losses of the uninterrupted process, the steps before and after the resume alike
    got = _steps(run)
    assert sorted(got) == list(range(1, STEPS + 1))
    for s in range(1, STEPS + 1):
        (loss, gnorm), (loss0, gnorm0) = got[s], ref[s]
        assert loss == pytest.approx(loss0, rel=LOSS_RTOL), f"step {s}: loss {loss} vs {loss0}"
        assert gnorm == pytest.approx(gnorm0, rel=GNORM_RTOL), f"step {s}: grad norm {gnorm} vs {gnorm0}"
    assert losses_by_step(run).keys() == ref.keys()
    print(f"\n2 nodes x 2 processes, tp 2 x dp_shard 2, preempted at step {rec['step']}: {time.monotonic() - t0:.1f} s")
