"""Real torchrun with 4 processes on gloo: the `parallel:` layouts (FSDP2 x TP + SP, TP alone, HSDP, TP with
loss_parallel) train the same losses and gradient norms as one process, and a checkpoint written on one
layout resumes on another (and on one process) with the same losses and data order; a tied model under
tp 4. One test function, so each one-process reference is trained once: 9 process starts, about 2 minutes
on 2 cores. Pipeline parallel (every schedule, with FSDP2 and with TP) has its own test function and
one-process reference (5 layers, so the stages split unevenly): 7 process starts, about 3 minutes."""

from __future__ import annotations

import json
import os
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
    layouts = {  # name: (parallel, micro batch, grad_accum, activation checkpointing)
        "fsdp2-tp2": ({"dp_shard": 2, "tp": 2}, 4, 1, False),
        "tp4": ({"tp": 4}, 4, 2, True),  # recomputing a block in backward gives the same numbers
        "hsdp2x2": ({"dp_replicate": 2, "dp_shard": -1}, 2, 1, False),
    }
    vals = {}
    for name, (parallel, micro, accum, ac) in layouts.items():
        run_dir = train(tmp_path, tiny_data_dir, name, 4, parallel, micro, accum, activation_checkpointing=ac)
        assert_close(records(run_dir), ref, range(1, STEPS + 1), name)
        vals[name] = val_losses(run_dir)
    # A tied model (the head is the embedding's matrix): its head takes the embedding's vocab shards.
    tied = {"model": {"tie_embeddings": True}}
    tied_ref = records(train(tmp_path, tiny_data_dir, "tied-ref", 1, None, micro=4, accum=2, **tied))
    tp4_tied = train(tmp_path, tiny_data_dir, "tied-tp4", 4, {"tp": 4, "loss_parallel": True}, 4, 2, **tied)
    assert_close(records(tp4_tied), tied_ref, range(1, STEPS + 1), "tied-tp4")
    # The eval at the end reads eval_batches x dp x micro batch validation samples: tp 4 reads the reference's
    # 8, both other layouts the same 16 (dp 2 x 4 and dp 4 x 2).
    assert vals["tp4"] == pytest.approx(val_losses(ref_dir), rel=LOSS_RTOL)
    assert vals["hsdp2x2"] == pytest.approx(vals["fsdp2-tp2"], rel=LOSS_RTOL)

    # One run across three layouts, resharded by DCP at each resume: stopped at step 4 on dp_shard 2 x tp 2
    # with loss_parallel, resumed on HSDP and stopped at step 8, finished on one process without a parallel:
    # block. Its losses and gradient norms are the uninterrupted one-process run's, step for step.
    legs = [
        (4, {"dp_shard": 2, "tp": 2, "loss_parallel": True}, 4, 1, "stop:4:3"),
        (4, {"dp_replicate": 2, "dp_shard": 2}, 2, 1, "stop:8:0"),
        (1, None, 4, 2, ""),
    ]
    run_dir, outs = resume_legs(tmp_path, tiny_data_dir, "part", legs)
    for out in outs[1:]:
        assert "resume: config changed since the checkpoint" in out
        assert "global batch" not in out  # 8 sequences per step on every layout
    assert 'parallel {"dp_replicate": 2, "dp_shard": 2' in outs[2]  # the block removed, named in one change
    starts = [(r["step"], r["world_size"]) for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert starts == [(0, 4), (4, 4), (8, 1)]
    # the data order: every checkpoint sits exactly step x 8 samples into the epoch, as in the reference
    for step in (4, 8, 12):
        state = json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
        assert (state["loader"]["epoch"], state["loader"]["samples"]) == (0, 8 * step)
    assert_close(records(run_dir), ref, range(1, STEPS + 1), "resumed across layouts")


def resume_legs(base: Path, data: Path, name: str, legs: list[tuple], **kw) -> tuple[Path, list[str]]:
    """One run in legs (nproc, parallel, micro batch, grad_accum, fault): each but the last stopped by its
    fault, each after the first resumed from the previous leg's checkpoint. Returns the run dir and what
    each leg printed."""
    path = base / f"{name}.yaml"
    run_dir = base / "runs" / name
    outs = []
    for i, (nproc, parallel, micro, accum, fault) in enumerate(legs):
        write_config(path, config(base, data, name, parallel, micro, accum, **kw))
        if (run_dir / "control" / "fault_done").exists():
            (run_dir / "control" / "fault_done").unlink()  # allow the next leg's injected stop
        r = run_train(path, nproc, fault)
        assert r.returncode == (0 if i == len(legs) - 1 else 75), r.stdout[-3000:] + r.stderr[-3000:]
        if i:
            assert f"resumed from {run_dir / 'checkpoints'}" in r.stdout
        outs.append(r.stdout)
    return run_dir, outs


def test_pipeline_layouts_match_one_process(tmp_path, tiny_data_dir):
    """Pipeline parallel against one process: 1F1B on pp 2 x dp_shard 2 (FSDP2 per stage, activation
    checkpointing), Interleaved1F1B on pp 2 x tp 2 (two stages per rank, TP + SP and loss_parallel per
    stage), and GPipe as one leg of a run resumed across layouts. Every run trains 8 sequences per step and
    its eval reads 8 validation sequences per batch (dp x micro batch), as the reference does."""
    five = {"model": {"n_layers": 5}}  # 3/2 layers on two stages, 2/1/1/1 on four
    ref_dir = train(tmp_path, tiny_data_dir, "pp-ref", 1, None, micro=8, accum=1, **five)
    ref = records(ref_dir)
    assert sorted(ref) == list(range(1, STEPS + 1))
    runs = {  # name: (parallel, micro batch, activation checkpointing, the layout in the start line)
        "pp2-fsdp2": (
            {"pp": 2, "dp_shard": 2},
            4,
            True,
            "pp 2 x dp_shard 2 (1F1B, 2 micro batches, layers per stage 3/2)",
        ),
        "pp2-tp2-interleaved": (
            {"pp": 2, "tp": 2, "pp_schedule": "Interleaved1F1B", "loss_parallel": True},
            8,
            False,
            "pp 2 x tp 2 (Interleaved1F1B, 4 micro batches, layers per stage 2/1/1/1)",
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
    for name in ("pp-ref", "pp2-fsdp2"):
        out = export_run(tmp_path / "runs" / name, tmp_path / f"{name}-hf", dtype="fp32")
        exported[name] = load_file(out / "model.safetensors")
    assert sorted(exported["pp2-fsdp2"]) == sorted(exported["pp-ref"])
    for key, want in exported["pp-ref"].items():
        torch.testing.assert_close(exported["pp2-fsdp2"][key], want, rtol=1e-4, atol=1e-5, msg=key)

    # Written on dp_shard 2 x tp 2, resumed on pp 2 x dp_shard 2, then on pp 2 x tp 2 with GPipe (its first
    # stage holds none of the parameters the previous pipeline's last stage wrote), finished on one process.
    run_dir, outs = resume_legs(
        tmp_path,
        tiny_data_dir,
        "pp-part",
        [
            (4, {"dp_shard": 2, "tp": 2}, 4, 1, "stop:3:3"),
            (4, {"pp": 2, "dp_shard": 2}, 4, 1, "stop:6:0"),
            (4, {"pp": 2, "tp": 2, "pp_schedule": "GPipe", "loss_parallel": True}, 8, 1, "stop:9:1"),
            (1, None, 8, 1, ""),
        ],
        **five,
    )
    assert "parallel.pp 1 -> 2" in outs[1]
    assert "parallel.pp_schedule 1F1B -> GPipe" in outs[2]
    starts = [(r["step"], r["world_size"]) for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert starts == [(0, 4), (3, 4), (6, 4), (9, 1)]
    for step in (3, 6, 9, 12):
        state = json.loads((run_dir / "checkpoints" / f"step_{step:08d}" / "trainer_state.json").read_text())
        assert (state["loader"]["epoch"], state["loader"]["samples"]) == (0, 8 * step)
    assert_close(records(run_dir), ref, range(1, STEPS + 1), "resumed across pipeline layouts")
