"""The bench scripts' smoke modes (tiny model, CPU, fp32) run end to end and write sane JSON.

The train-throughput smoke is also a real numerics check: mltrain's Transformer loaded through the
HF import must train in lockstep with transformers' Qwen2 from the same weights on the same batches.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
SKIP_LINE = "no CUDA device: skipping"


def run_script(name: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, f"rc {proc.returncode}\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"


def test_train_throughput_smoke(tmp_path, tiny_data_dir):
    out = tmp_path / "train.json"
    ok(run_script("train_throughput.py", "--smoke", "--data", str(tiny_data_dir), "--out", str(out)))
    data = json.loads(out.read_text())
    assert data["mode"] == "smoke" and data["benchmark"] == "train_throughput"
    assert {"hf_eager", "mltrain", "mltrain_trainer", "mltrain_mb4"} <= set(data["variants"])
    for name, v in data["variants"].items():
        assert v["tokens_per_s"] > 0 and v["step_time_s"] > 0, name
        assert v["loss_finite"] and math.isfinite(v["last_loss"]), name
        assert math.isclose(v["tokens_per_s"] * v["step_time_s"], v["micro_batch"] * v["seq_len"], rel_tol=1e-6)
    assert data["variants"]["mltrain"]["loss_chunk_tokens"] > 0  # the chunked-CE path ran
    trainer = data["variants"]["mltrain_trainer"]
    assert trainer["trainer_parallel"] == "fsdp" and trainer["trainer_bf16_autocast_active"] is False
    # the headline figures are recomputed from the variants: `in variants` and `> 0` would pass whatever the bug
    ours = {k: v for k, v in data["variants"].items() if not k.startswith("hf_") and "error" not in v}
    best = max(ours, key=lambda k: ours[k]["tokens_per_s"])
    assert data["best_mltrain_variant"] == best
    assert data["speedup_vs_hf_eager"] == pytest.approx(
        ours[best]["tokens_per_s"] / data["variants"]["hf_eager"]["tokens_per_s"]
    )
    assert data["flops_per_token"] > 0 and data["peak_flops_measured_matmul"] > 0

    n = data["numerics"]
    assert n["all_finite"] and n["steps"] == len(n["loss_hf"]) == len(n["loss_mltrain"]) == 30
    assert n["final_loss_hf"] < n["first_loss_hf"] - 0.1  # real text: the model learns
    # fp32 on CPU: the two implementations agree to float rounding, step after step
    assert n["mean_abs_loss_diff"] < 1e-4 and n["max_abs_loss_diff"] < 1e-3
    assert data["targets_met"]["numerics_mean_abs_loss_diff<0.02"] is True


def test_checkpoint_smoke(tmp_path):
    out = tmp_path / "ckpt.json"
    ok(
        run_script(
            "checkpoint.py",
            "--smoke",
            "--repeats",
            "2",
            "--overlap-steps",
            "3",
            "--out",
            str(out),
            "--dir",
            str(tmp_path),
        )
    )
    data = json.loads(out.read_text())
    assert data["state_bytes"] > 0
    for mode in ("sync", "async"):
        m = data["modes"][mode]
        assert len(m["saves"]) == 2 and not m["warnings"]
        assert all(0 < s["blocked_s"] <= s["total_s"] for s in m["saves"])
        assert m["checkpoint_bytes"] >= 0.9 * data["state_bytes"]  # model + both AdamW moments on disk
        assert m["save_gb_per_s"] > 0 and m["load_gb_per_s"] > 0
        assert m["hash_gb_per_s"] > 0 and m["verify_gb_per_s"] > 0  # every byte checksummed, and verified
    assert data["hash_in_memory_gb_per_s"]["xxh3_128"] > 0
    for lever in ("dcp_pinned_stager", "dcp_pinned_stager_async_staging"):
        assert all(0 < s["blocked_s"] <= s["total_s"] for s in data["modes"][lever]["saves"])
    # the targets and overlap figures recomputed from the saves: a type check would pass whatever the bench computed
    a = data["modes"]["async"]
    assert a["blocked_s_max"] == max(s["blocked_s"] for s in a["saves"])
    assert data["targets_met"]["async_blocked_s<=1"] is (a["blocked_s_max"] <= data["targets"]["async_blocked_s"])
    overlap = a["train_during_async_write"]
    assert overlap["step_s_idle_median"] > 0 and 0 <= overlap["steps_during_write"] <= 3  # --overlap-steps 3
    if overlap["steps_during_write"]:
        assert overlap["slowdown"] == pytest.approx(
            overlap["step_s_during_write_median"] / overlap["step_s_idle_median"]
        )
    else:
        assert overlap["slowdown"] is None and overlap["step_s_during_write_median"] is None
    assert not list(tmp_path.glob("mltrain-bench-ckpt-*"))  # the checkpoints are cleaned up


def test_loader_smoke(tmp_path, tiny_data_dir):
    out = tmp_path / "loader.json"
    ok(
        run_script(
            "loader.py",
            "--smoke",
            "--data",
            str(tiny_data_dir),
            "--seq-len",
            "64",
            "--seconds",
            "0.3",
            "--train-tokens-per-s",
            "1000",
            "--out",
            str(out),
        )
    )
    data = json.loads(out.read_text())
    assert data["loader"]["batches"] > 0 and data["tokens_per_s"] > 0
    assert data["loader"]["tokens"] == data["loader"]["batches"] * 8 * 64
    assert data["train_tokens_per_s"] == 1000 and data["train_tokens_per_s_source"] == "--train-tokens-per-s"
    assert math.isclose(data["ratio_vs_training"], data["tokens_per_s"] / 1000)
    assert data["torch_threads"] == 1
    if hasattr(os, "sched_getaffinity"):
        assert data["pinned_cpu"] in os.sched_getaffinity(0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, full mode runs the real benchmark")
@pytest.mark.parametrize("script", ["train_throughput.py", "checkpoint.py"])
def test_full_mode_without_cuda_skips(script, tmp_path):
    proc = run_script(script, "--out", str(tmp_path / "x.json"), env={"CUDA_VISIBLE_DEVICES": ""})
    ok(proc)
    assert proc.stdout.strip() == SKIP_LINE
    assert not (tmp_path / "x.json").exists()


def test_summary_and_targets_logic():
    """The top-level ratios come from the best mltrain variant and the same-micro-batch memory."""
    sys.path.insert(0, str(BENCH))
    try:
        import train_throughput as tt
    finally:
        sys.path.remove(str(BENCH))
    s = tt.Settings(
        device=torch.device("cpu"),
        smoke=True,
        seq_len=8,
        micro_batch=8,
        big_micro_batch=16,
        bf16=False,
        compile=False,
        loss_chunk_tokens=4,
        warmup_steps=1,
        timed_steps=1,
        numerics_steps=0,
        numerics_skip=0,
        lr=1e-3,
    )
    res = {
        "hf_eager": {"family": "hf", "tokens_per_s": 100.0, "micro_batch": 8, "peak_mem_gib": 60.0},
        "hf_compile": {"family": "hf", "tokens_per_s": 150.0, "micro_batch": 8, "peak_mem_gib": 40.0},
        "mltrain": {"family": "mltrain", "tokens_per_s": 200.0, "micro_batch": 8, "peak_mem_gib": 30.0},
        "mltrain_mb16": {"family": "mltrain", "tokens_per_s": 225.0, "micro_batch": 16, "peak_mem_gib": 55.0},
        "mltrain_trainer": {"family": "trainer", "micro_batch": 8, "error": "out of memory"},
    }
    sm = tt.summarise(res, s)
    assert sm["best_mltrain_variant"] == "mltrain_mb16"
    assert sm["speedup_vs_hf_eager"] == 2.25 and sm["speedup_vs_hf_compile"] == 1.5
    assert sm["peak_mem_ratio_variant"] == "mltrain" and sm["peak_mem_ratio_vs_hf_eager"] == 0.5
    met = tt.targets_met(sm, {"mean_abs_loss_diff": 0.03})
    assert met == {
        "speedup_vs_hf_compile>=1.4": True,
        "peak_mem_ratio_vs_hf_eager<=0.6": True,
        "numerics_mean_abs_loss_diff<0.02": False,
    }


@pytest.mark.slow
def test_trainer_compile_path_smoke(tmp_path, tiny_data_dir):
    """train.compile: true through mltrain's Trainer (per-block compile, fullgraph=True, chunked loss) on
    CPU, and compiled blocks training in lockstep with HF. ~40 s with a cold inductor cache on 2 cores."""
    out = tmp_path / "compile.json"
    ok(
        run_script(
            "train_throughput.py",
            "--smoke",
            "--compile",
            "--variants",
            "mltrain_trainer",
            "--numerics-steps",
            "12",
            "--data",
            str(tiny_data_dir),
            "--out",
            str(out),
        )
    )
    data = json.loads(out.read_text())
    v = data["variants"]["mltrain_trainer"]
    assert v["trainer_compile"] is True and v["compile"] == "blocks" and v["loss_chunk_tokens"] > 0
    assert v["loss_finite"] and v["tokens_per_s"] > 0
    n = data["numerics"]
    assert n["candidate"] == "mltrain" and n["all_finite"] and n["mean_abs_loss_diff"] < 1e-4
