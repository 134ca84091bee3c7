"""Real torchrun with 2 processes on gloo: DDP and FSDP2 training, exact resume after a stop (sync and
async checkpoints), resume on another number of processes, the records a run writes, FSDP dtypes."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow

# Resume on another world size changes only the order of floating-point reductions (DDP averages
# 2 ranks' gradients where one rank accumulates 2 micro-batches; FSDP reduce-scatters), so losses
# agree to a few fp32 ulps per step, not bit for bit. Measured: <= 1.5e-7 relative over 5 steps;
# 1e-5 leaves room for Adam amplifying that while still catching any skipped or repeated batch
# (one different batch changes the loss by > 1e-3 relative).
RESHARD_RTOL = 1e-5


def run_train(cfg_path: Path, nproc: int, env_extra: dict | None = None, timeout: int = 240, overrides=()):
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    env.update(env_extra or {})
    sets = [a for o in overrides for a in ("--set", o)]
    return subprocess.run(
        mltrain_cmd("train", str(cfg_path), "--nproc", str(nproc), *sets),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step training loss; for steps logged twice (resume), the later record."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


def loader_samples(run_dir: Path, step: int) -> tuple[int, int]:
    """(epoch, global samples consumed) recorded in checkpoint `step`."""
    state = json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
    return state["loader"]["epoch"], state["loader"]["samples"]


def config(tmp_path: Path, data: Path, name: str, parallel: str, accum: int, async_save: bool = False) -> dict:
    cfg = tiny_run_config(tmp_path, data, name, parallel=parallel, grad_accum_steps=accum, eval_every=4)
    cfg["train"]["device"] = "cpu"  # the launcher then counts no GPUs (no torch import: ~1.4 s CPU a start)
    cfg["checkpoint"]["async_save"] = async_save
    return cfg


@pytest.fixture(scope="module")
def reference(tmp_path_factory, tiny_data_dir):
    """Uninterrupted 8-step runs, one per (parallel, nproc, accum), shared by the tests of this module."""
    done: dict[tuple, Path] = {}

    def get(parallel: str, nproc: int, accum: int) -> Path:
        key = (parallel, nproc, accum)
        if key not in done:
            base = tmp_path_factory.mktemp(f"ref-{parallel}-{nproc}-{accum}")
            path = write_config(base / "full.yaml", config(base, tiny_data_dir, "full", parallel, accum))
            r = run_train(path, nproc)
            assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
            done[key] = base / "runs" / "full"
            assert sorted(losses(done[key])) == list(range(1, 9))
        return done[key]

    return get


@pytest.mark.parametrize("parallel, accum, single, async_save", [("ddp", 2, "none", False), ("fsdp", 1, "fsdp", True)])
def test_stop_and_resume(tmp_path, tiny_data_dir, reference, parallel, accum, single, async_save):
    """A preemption warning (SIGUSR1) reaches the last of 2 ranks during step 5: checkpoint at 5 (off the
    every-3 schedule), exit 75. From that stop the run resumes twice: on the same 2 processes, bitwise
    identical to the uninterrupted run; and, the run dir put back as the stop left it, 2 -> 1 -> 2 processes
    (see resume_on_another_number_of_processes). DDP runs with 2 micro-batches per step, so the no_sync
    accumulation path is covered too; FSDP writes its checkpoints in the background (checkpoint.async_save),
    so one run resumes from checkpoints written synchronously and one from background-written ones. Sync and
    async save are one code path each whatever wraps the model (CheckpointManager hands DCP the state dict),
    and DDP's replicated and FSDP's sharded state are each written and read back here."""
    part = write_config(tmp_path / "part.yaml", config(tmp_path, tiny_data_dir, "part", parallel, accum, async_save))
    run_dir, r1 = stopped_at_5(part, 2, "stop:5:1")
    if async_save:
        assert "writing in background" in r1.stdout
    stopped = tmp_path / "stopped"
    shutil.copytree(run_dir, stopped, symlinks=True)
    resumes_identically(part, 2, "stop:5:1", reference(parallel, 2, accum))

    shutil.rmtree(run_dir)
    shutil.copytree(stopped, run_dir, symlinks=True)
    resume_on_another_number_of_processes(run_dir, part, reference(parallel, 2, accum), parallel, accum, single)


def test_stop_and_resume_on_one_process(tmp_path, tiny_data_dir, reference):
    """As test_stop_and_resume, without a process group: bitwise identical to the uninterrupted run."""
    part = write_config(tmp_path / "part.yaml", config(tmp_path, tiny_data_dir, "part", "none", 1))
    stopped_at_5(part, 1, "stop:5:0")
    resumes_identically(part, 1, "stop:5:0", reference("none", 1, 1))


def stopped_at_5(part: Path, nproc: int, fault: str) -> tuple[Path, subprocess.CompletedProcess]:
    """Run `part` on `nproc` processes with the stop fault at step 5: it checkpoints step 5 and exits 75
    (preempted). Returns the run dir and the run."""
    r1 = run_train(part, nproc, {"MLTRAIN_FAULT": fault})
    assert r1.returncode == 75, r1.stdout[-3000:] + r1.stderr[-3000:]
    run_dir = part.parent / "runs" / "part"
    assert (run_dir / "control" / "exit_reason").read_text().strip() == "preempted"
    assert max(losses(run_dir)) == 5
    assert (run_dir / "checkpoints" / "step_00000005" / "COMMITTED").is_file()
    return run_dir, r1


def resumes_identically(part: Path, nproc: int, fault: str, ref_dir: Path) -> None:
    """Start `part` again (the fault is done, not again): it resumes from step 5 and every step's loss is
    bitwise the uninterrupted run's in `ref_dir`."""
    ref = losses(ref_dir)
    r2 = run_train(part, nproc, {"MLTRAIN_FAULT": fault})
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "resumed from" in r2.stdout
    run_dir = part.parent / "runs" / "part"
    got = losses(run_dir)
    assert [r["step"] for r in read_metrics(run_dir) if r["kind"] == "start"] == [0, 5]
    for step in range(1, 9):
        assert got[step] == ref[step], f"step {step}: resumed {got[step]!r} != uninterrupted {ref[step]!r}"


def resume_on_another_number_of_processes(
    run_dir: Path, path: Path, ref_dir: Path, parallel: str, accum: int, single: str
) -> None:
    """The run stopped at step 5 on 2 processes goes on: 1 process -> 2 processes. The 1-process leg doubles
    grad_accum_steps so the global batch (16 sequences for ddp, 8 for fsdp) stays; the loader continues at
    the same global sample."""
    ref = losses(ref_dir)
    global_batch = 2 * 4 * accum
    (run_dir / "control" / "fault_done").unlink()  # allow a second injected stop in this run dir
    r2 = run_train(path, 1, {"MLTRAIN_FAULT": "stop:7:0"}, overrides=[f"train.parallel={single}"])
    assert r2.returncode == 75, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert f"grad_accum_steps {accum} -> {2 * accum} on 1 rank(s) keeps its global batch of {global_batch}" in r2.stdout
    # the 1-process leg overrides train.parallel: each resume names that change and records it
    moved = [f"train.parallel {parallel} -> {single}"] if single != parallel else []
    changed = [x for x in r2.stdout.splitlines() if "config changed" in x]
    assert changed == ([f"[mltrain] resume: config changed since the checkpoint (step 5): {moved[0]}"] if moved else [])
    r3 = run_train(path, 2)
    assert r3.returncode == 0, r3.stdout[-3000:] + r3.stderr[-3000:]
    assert f"grad_accum_steps {accum} -> {accum}" not in r3.stdout  # back on 2: the configured value fits
    starts = [(r["step"], r["world_size"]) for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert starts == [(0, 2), (5, 1), (7, 2)]
    changes = [r.get("config_changes") for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert changes == (
        [None, {"train.parallel": [parallel, single]}, {"train.parallel": [single, parallel]}] if moved else [None] * 3
    )
    # The loader's position is global: every checkpoint sits exactly (step x global batch) into the epoch,
    # whichever number of processes wrote it, and the final one matches the uninterrupted run's.
    assert (run_dir / "checkpoints" / "step_00000007").is_dir()  # written by the 1-process leg
    for step in (5, 6, 7, 8):
        if (run_dir / "checkpoints" / f"step_{step:08d}").is_dir():
            assert loader_samples(run_dir, step) == (0, step * global_batch)
    assert loader_samples(run_dir, 8) == loader_samples(ref_dir, 8)
    got = losses(run_dir)
    for step in range(1, 9):
        assert math.isclose(got[step], ref[step], rel_tol=RESHARD_RTOL), (step, got[step], ref[step])
    for step in range(1, 6):
        assert got[step] == ref[step]  # before the first resize: bit for bit


def test_resume_refuses_a_layout_that_cannot_keep_the_global_batch(tmp_path, tiny_data_dir, reference):
    """Global batch 16 (2 x 4 x 2) cannot be kept by 1 process with micro batch 3: one line naming what can."""
    src = reference("ddp", 2, 2)
    path = write_config(tmp_path / "c.yaml", config(tmp_path, tiny_data_dir, "full", "ddp", 2))
    dst = tmp_path / "runs" / "full"
    dst.mkdir(parents=True)
    subprocess.run(["cp", "-r", str(src / "checkpoints"), str(src / "config.yaml"), str(dst)], check=True)
    r = run_train(path, 1, overrides=["train.micro_batch_size=3", "train.max_steps=9"])
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert "global batch of 16 sequences (2 ranks x micro batch 4 x grad_accum 2)" in lines[0]
    assert "rank counts that can with micro batch 3: none" in lines[0]
    assert "micro batch sizes that can on 1 ranks: 1, 2, 4, 8, 16" in lines[0]


def test_metrics_records_of_a_real_run(reference):
    """What report/status/console read, as a real 2-process trainer writes it (not hand-written)."""
    from mltrain.config import TrainConfig
    from mltrain.train.optim import lr_at

    run_dir = reference("ddp", 2, 2)
    recs = read_metrics(run_dir)
    assert recs[0]["kind"] == "start" and recs[0]["step"] == 0 and recs[0]["world_size"] == 2
    assert recs[0]["params"] > 0 and recs[0]["flops_per_token"] > 0
    assert recs[-1] == {**recs[-1], "kind": "exit", "step": 8, "reason": "done"}
    tc = TrainConfig(**{k: v for k, v in config(run_dir, run_dir, "x", "ddp", 2)["train"].items()})
    train = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, 9))
    for r in train:
        assert r["lr"] == pytest.approx(lr_at(r["step"], tc), rel=1e-9)
        assert math.isfinite(r["grad_norm"]) and r["grad_norm"] > 0
        assert math.isfinite(r["loss"]) and r["tokens_per_s"] > 0 and r["step_time_s"] > 0
        assert r["mfu"] is None  # CPU: no peak FLOP/s to divide by
        assert r["mem_gib"] > 0
    assert max(r["lr"] for r in train) == pytest.approx(tc.lr)  # warmup reaches the peak
    assert train[-1]["lr"] < train[2]["lr"]  # then decays
    evals = [r for r in recs if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [4, 8]
    for r in evals:
        assert math.isfinite(r["val_loss"]) and r["val_ppl"] == pytest.approx(math.exp(r["val_loss"]))


def test_fsdp_bf16_dtypes_on_two_ranks(tmp_path, tiny_data_dir):
    """train.dtype bf16 + fsdp on 2 gloo ranks: parameters are all-gathered and used in bf16, gradients are
    reduce-scattered in fp32, and the sharded master weights and Adam moments stay fp32."""
    path = write_config(
        tmp_path / "bf.yaml", tiny_run_config(tmp_path, tiny_data_dir, "bf", parallel="fsdp", dtype="bf16")
    )
    out = tmp_path / "dtypes.json"
    worker = Path(__file__).with_name("fsdp_dtypes_worker.py")
    r = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        + [str(worker), str(path), str(out)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    got = json.loads(out.read_text())
    assert got["fsdp_active"] is True
    assert got["all_gather"] == ["torch.bfloat16"] and got["forward_weight"] == ["torch.bfloat16"]
    assert got["reduce_scatter"] == ["torch.float32"]
    assert got["sharded_param"] == ["torch.float32"] and got["optimizer_state"] == ["torch.float32"]


def test_missing_data_is_one_line_and_nonzero_exit(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, tmp_path / "nope", parallel="ddp", device="cpu"))
    r = run_train(cfg, 2)
    assert r.returncode == 1
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "no prepared data" in lines[0] and "Traceback" not in r.stderr
