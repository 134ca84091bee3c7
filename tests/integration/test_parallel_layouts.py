"""Real torchrun with 4 processes on gloo: the `parallel:` layouts (FSDP2 x TP + SP, TP alone, HSDP, TP with
loss_parallel) train the same losses and gradient norms as one process, and a checkpoint written on one
layout resumes on another with the same losses and data order."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow

# Every layout sums the same fp32 numbers in another order (tensor parallel splits each matmul's inner
# sum over ranks, FSDP reduce-scatters, HSDP all-reduces the shards' reductions), so the losses agree to
# a few fp32 ulps per step, not bit for bit, and Adam carries that along. Measured here over 12 steps:
# see the assertion values; the tolerances leave room while a single different batch or a missing
# gradient reduction moves the loss by > 1e-3 relative and the gradient norm by more.
LOSS_RTOL = 1e-5
GNORM_RTOL = 1e-4
STEPS = 12


def run_train(cfg_path: Path, nproc: int, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
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


def config(base: Path, data: Path, name: str, parallel: dict | None, micro: int, accum: int, **train) -> dict:
    """The tiny model with untied embeddings and 8 query / 4 KV heads (tp 4 needs both divisible by 4);
    every layout trains a global batch of 8 sequences per step."""
    cfg = tiny_run_config(base, data, name, micro_batch_size=micro, grad_accum_steps=accum, max_steps=STEPS, **train)
    cfg["model"].update(n_heads=8, n_kv_heads=4, tie_embeddings=False)
    cfg["checkpoint"] = {"every_steps": 6, "keep_last": 2}
    if parallel is not None:
        cfg["parallel"] = parallel
    return cfg


def train(base: Path, data: Path, name: str, nproc: int, parallel: dict | None, micro: int, accum: int, **kw) -> Path:
    path = write_config(base / f"{name}.yaml", config(base, data, name, parallel, micro, accum, **kw))
    r = run_train(path, nproc)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return base / "runs" / name


def assert_close(got: dict, want: dict, steps: range, what: str) -> None:
    for s in steps:
        (loss, gnorm), (loss0, gnorm0) = got[s], want[s]
        assert loss == pytest.approx(loss0, rel=LOSS_RTOL), f"{what}: step {s} loss {loss} vs {loss0}"
        assert gnorm == pytest.approx(gnorm0, rel=GNORM_RTOL), f"{what}: step {s} grad norm {gnorm} vs {gnorm0}"


def test_layouts_match_one_process(tmp_path, tiny_data_dir):
    ref = records(train(tmp_path, tiny_data_dir, "ref", 1, None, micro=4, accum=2))
    assert sorted(ref) == list(range(1, STEPS + 1))
    layouts = {
        "fsdp2-tp2": ({"dp_shard": 2, "tp": 2}, 4, 1),
        "tp4": ({"tp": 4}, 4, 2),
        "hsdp2x2": ({"dp_replicate": 2, "dp_shard": -1}, 2, 1),
        "fsdp2-tp2-lossparallel": ({"dp_shard": 2, "tp": 2, "loss_parallel": True}, 4, 1),
    }
    for name, (parallel, micro, accum) in layouts.items():
        run_dir = train(tmp_path, tiny_data_dir, name, 4, parallel, micro, accum)
        assert_close(records(run_dir), ref, range(1, STEPS + 1), name)
