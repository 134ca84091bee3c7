"""Real torchrun with 4 processes on gloo: the `parallel:` layouts (FSDP2 x TP + SP, TP alone, HSDP, TP with
loss_parallel, pipeline parallel with every schedule, with FSDP2 and with TP) train the same losses and gradient
norms as one process, and a checkpoint written on one layout resumes on another (and on one process) with the
same losses and data order. A 4-process start costs ~15 s of CPU (four workers importing torch), so a resumed
run begins as one of the layout runs: finished, taken back to its step-6 checkpoint and resumed from there on
other layouts. The first test makes 6 process starts (3 of 4 processes), the pipeline test 5 (3 of 4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow

# Every layout sums the same fp32 numbers in another order (tensor parallel splits each matmul's inner
# sum over ranks, FSDP reduce-scatters, HSDP all-reduces the shards' reductions), so the losses agree to
# a few fp32 ulps per step, not bit for bit, and Adam carries that along. Measured here over 12 steps:
# <= 1.5e-7 relative for the loss, <= 3.3e-6 for the gradient norm (a norm is a sum of squares over every
# parameter, so it collects more reordering). The tolerances leave >= 30x room while a single different
# batch or a missing gradient reduction moves the loss by > 1e-3 relative and the gradient norm by more.
LOSS_RTOL = 1e-5
GNORM_RTOL = 1e-4
STEPS = 12


def run_train(cfg_path: Path, nproc: int, fault: str = "", timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    if fault:
        env["MLTRAIN_FAULT"] = fault
    return subprocess.run(
        mltrain_cmd("train", str(cfg_path), "--nproc", str(nproc)),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def records(run_dir: Path) -> dict[int, tuple[float, float]]:
    """step -> (loss, grad norm); for a step logged twice (resume), the later record."""
    return {r["step"]: (r["loss"], r["grad_norm"]) for r in read_metrics(run_dir) if r["kind"] == "train"}


def val_losses(run_dir: Path) -> list[float]:
    return [r["val_loss"] for r in read_metrics(run_dir) if r["kind"] == "eval"]


def config(
    base: Path, data: Path, name: str, parallel: dict | None, micro: int, accum: int, model: dict | None = None, **train
) -> dict:
    """The tiny model with untied embeddings (unless `model` says) and 8 query / 4 KV heads (tp 4 needs both
    divisible by 4); every layout trains a global batch of 8 sequences per step."""
    cfg = tiny_run_config(base, data, name, micro_batch_size=micro, grad_accum_steps=accum, max_steps=STEPS, **train)
    cfg["model"].update({"n_heads": 8, "n_kv_heads": 4, "tie_embeddings": False, **(model or {})})
    cfg["train"]["device"] = "cpu"  # the launcher then counts no GPUs (no torch import: ~1.4 s CPU a start)
    cfg["checkpoint"] = {"every_steps": 6, "keep_last": 5}
    if parallel is not None:
        cfg["parallel"] = parallel
    return cfg


def train(base: Path, data: Path, name: str, nproc: int, parallel: dict | None, micro: int, accum: int, **kw) -> Path:
    return train_out(base, data, name, nproc, parallel, micro, accum, **kw)[0]


def train_out(
    base: Path, data: Path, name: str, nproc: int, parallel: dict | None, micro: int, accum: int, **kw
) -> tuple[Path, str]:
    """train(), and what rank 0 printed."""
    path = write_config(base / f"{name}.yaml", config(base, data, name, parallel, micro, accum, **kw))
    r = run_train(path, nproc)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return base / "runs" / name, r.stdout


def assert_close(got: dict, want: dict, steps: range, what: str) -> None:
    for s in steps:
        (loss, gnorm), (loss0, gnorm0) = got[s], want[s]
        assert loss == pytest.approx(loss0, rel=LOSS_RTOL), f"{what}: step {s} loss {loss} vs {loss0}"
        assert gnorm == pytest.approx(gnorm0, rel=GNORM_RTOL), f"{what}: step {s} grad norm {gnorm} vs {gnorm0}"


def test_layouts_match_one_process(tmp_path, tiny_data_dir):
    ref_dir = train(tmp_path, tiny_data_dir, "ref", 1, None, micro=4, accum=2)
    ref = records(ref_dir)
    assert sorted(ref) == list(range(1, STEPS + 1))
    # A tied model (the head is the embedding's matrix) on tp 4 alone: its head takes the embedding's vocab
    # shards and keeps its logits sharded (loss_parallel); recomputing a block in backward (activation
    # checkpointing) gives the same numbers.
    tied = {"model": {"tie_embeddings": True}}
    tied_ref_dir = train(tmp_path, tiny_data_dir, "tied-ref", 1, None, micro=4, accum=2, **tied)
    tp4 = {"tp": 4, "loss_parallel": True}
    tp4_dir = train(tmp_path, tiny_data_dir, "tied-tp4", 4, tp4, 4, 2, activation_checkpointing=True, **tied)
    assert_close(records(tp4_dir), records(tied_ref_dir), range(1, STEPS + 1), "tied-tp4")
    # The eval at the end reads eval_batches x dp x micro batch validation samples: tp 4 the reference's 8.
    assert val_losses(tp4_dir) == pytest.approx(val_losses(tied_ref_dir), rel=LOSS_RTOL)

    # HSDP (dp_shard -1: the ranks left by dp_replicate) from its own start to the end, then the same run
    # resharded by DCP at each resume: taken back to its step-6 checkpoint, resumed on one process without a
    # parallel: block and stopped at step 9, finished on dp_shard 2 x tp 2 (FSDP2 over TP's DTensors) with
    # loss_parallel.
    hsdp = {"dp_replicate": 2, "dp_shard": -1}
    run_dir = train(tmp_path, tiny_data_dir, "part", 4, hsdp, 2, 1)
    assert_close(records(run_dir), ref, range(1, STEPS + 1), "hsdp2x2")
    hsdp_vals = val_losses(run_dir)
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    legs = [
        (1, None, 4, 2, "stop:9:0"),
        (4, {"dp_shard": 2, "tp": 2, "loss_parallel": True}, 4, 1, ""),
    ]
    run_dir, outs = resume_legs(tmp_path, tiny_data_dir, "part", legs, first_resumes=True)
    changed = [[ln for ln in out.splitlines() if "resume: config changed since the checkpoint" in ln] for out in outs]
    assert [len(c) for c in changed] == [1, 1], outs
    assert "global batch" not in changed[0][0] + changed[1][0]  # 8 sequences per step on every layout
    assert '"dp_replicate": 2' in changed[0][0] and "} -> null" in changed[0][0]  # the block removed, one change
    assert 'parallel null -> {"dp_replicate": 1, "dp_shard": 2, "tp": 2' in changed[1][0]  # and one given
    starts = [(r["step"], r["world_size"]) for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert starts == [(0, 4), (6, 1), (9, 4)]
    # the data order: every checkpoint sits exactly step x 8 samples into the epoch, as in the reference
    for step in (6, 9, 12):
        state = json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
        assert (state["loader"]["epoch"], state["loader"]["samples"]) == (0, 8 * step)
    assert_close(records(run_dir), ref, range(1, STEPS + 1), "resumed across layouts")
    # The eval at the end reads eval_batches x dp x micro batch validation samples: HSDP and dp_shard 2 x tp 2
    # the same 16 (dp 4 x 2 and dp 2 x 4).
    assert val_losses(run_dir)[-1] == pytest.approx(hsdp_vals[-1], rel=LOSS_RTOL)


def resume_legs(
    base: Path, data: Path, name: str, legs: list[tuple], first_resumes: bool = False, **kw
) -> tuple[Path, list[str]]:
    """One run in legs (nproc, parallel, micro batch, grad_accum, fault): each but the last stopped by its
    fault, each after the first (and the first too with `first_resumes`) resumed from the run dir's latest
    checkpoint. Returns the run dir and what each leg printed."""
    path = base / f"{name}.yaml"
    run_dir = base / "runs" / name
    outs = []
    for i, (nproc, parallel, micro, accum, fault) in enumerate(legs):
        write_config(path, config(base, data, name, parallel, micro, accum, **kw))
        if (run_dir / "control" / "fault_done").exists():
            (run_dir / "control" / "fault_done").unlink()  # allow the next leg's injected stop
        r = run_train(path, nproc, fault)
        assert r.returncode == (0 if i == len(legs) - 1 else 75), r.stdout[-3000:] + r.stderr[-3000:]
        if i or first_resumes:
            assert f"resumed from {run_dir / 'checkpoints'}" in r.stdout
        outs.append(r.stdout)
    return run_dir, outs


def test_pipeline_layouts_match_one_process(tmp_path, tiny_data_dir):
    """Pipeline parallel against one process: Interleaved1F1B on pp 2 x tp 2 (two stages per rank, TP + SP and
    loss_parallel per stage) and 1F1B on pp 2 x dp_shard 2 (FSDP2 per stage, activation checkpointing), each
    from its own start; then the 1F1B run taken back to its step-6 checkpoint, resumed on one process, stopped
    at step 9 and finished on pp 2 x tp 2 with GPipe (TP + SP with the logits gathered, no loss_parallel).
    Every run trains 8 sequences per step and its eval reads 8 validation sequences per batch (dp x micro
    batch), as the reference does."""
    five = {"model": {"n_layers": 5}}  # 3/2 layers on two stages, 2/1/1/1 on four
    ref_dir = train(tmp_path, tiny_data_dir, "pp-ref", 1, None, micro=8, accum=1, **five)
    ref = records(ref_dir)
    assert sorted(ref) == list(range(1, STEPS + 1))
    runs = {  # name: (parallel, micro batch, activation checkpointing, the layout in the start line)
        "pp2-tp2-interleaved": (
            {"pp": 2, "tp": 2, "pp_schedule": "Interleaved1F1B", "loss_parallel": True},
            8,
            False,
            "pp 2 x tp 2 (Interleaved1F1B, 4 micro batches, layers per stage 2/1/1/1)",
        ),
        "pp-part": (
            {"pp": 2, "dp_shard": 2},
            4,
            True,
            "pp 2 x dp_shard 2 (1F1B, 2 micro batches, layers per stage 3/2)",
        ),
    }
    for name, (parallel, micro, ac, words) in runs.items():
        run_dir, out = train_out(
            tmp_path, tiny_data_dir, name, 4, parallel, micro, 1, activation_checkpointing=ac, **five
        )
        assert f"parallel={words}," in out
        assert_close(records(run_dir), ref, range(1, STEPS + 1), name)
        assert val_losses(run_dir) == pytest.approx(val_losses(ref_dir), rel=LOSS_RTOL)

    # HF export reads a pipeline run's checkpoint (every stage's keys) as it reads the reference's.
    from safetensors.torch import load_file

    from mltrain.infer.export import export_run

    exported = {}
    for name in ("pp-ref", "pp-part"):
        out = export_run(tmp_path / "runs" / name, tmp_path / f"{name}-hf", dtype="fp32")
        exported[name] = load_file(out / "model.safetensors")
    assert sorted(exported["pp-part"]) == sorted(exported["pp-ref"])
    for key, want in exported["pp-ref"].items():
        torch.testing.assert_close(exported["pp-part"][key], want, rtol=1e-4, atol=1e-5, msg=key)

    # Back to step 6 (written by the two stages of pp 2 x dp_shard 2): resumed on one process without a
    # parallel: block, stopped at step 9, and that checkpoint loaded into GPipe's stages on pp 2 x tp 2.
    shutil.rmtree(run_dir / "checkpoints" / f"step_{STEPS:08d}")
    run_dir, outs = resume_legs(
        tmp_path,
        tiny_data_dir,
        "pp-part",
        [
            (1, None, 8, 1, "stop:9:0"),
            (4, {"pp": 2, "tp": 2, "pp_schedule": "GPipe"}, 8, 1, ""),
        ],
        first_resumes=True,
        activation_checkpointing=True,
        **five,
    )
    removed = [ln for ln in outs[0].splitlines() if "resume: config changed" in ln]
    assert len(removed) == 1 and '"pp": 2' in removed[0] and "-> null" in removed[0], outs[0][-3000:]
    added = [ln for ln in outs[1].splitlines() if "resume: config changed" in ln]
    assert len(added) == 1 and "parallel null -> {" in added[0] and '"pp_schedule": "GPipe"' in added[0], added
    assert "parallel=pp 2 x tp 2 (GPipe, " in outs[1]
    starts = [(r["step"], r["world_size"]) for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert starts == [(0, 4), (6, 1), (9, 4)]
    for step in (6, 9, 12):
        state = json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
        assert (state["loader"]["epoch"], state["loader"]["samples"]) == (0, 8 * step)
    assert_close(records(run_dir), ref, range(1, STEPS + 1), "resumed across pipeline layouts")
    assert val_losses(run_dir)[-1] == pytest.approx(val_losses(ref_dir)[-1], rel=LOSS_RTOL)
