"""Real torchrun with 2 processes on gloo: DDP and FSDP2 training, and exact resume after a stop."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def run_train(cfg_path: Path, nproc: int, env_extra: dict | None = None, timeout: int = 240):
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_FAULT", "SLURM_RESTART_COUNT")}
    env.update(env_extra or {})
    return subprocess.run(
        mltrain_cmd("train", str(cfg_path), "--nproc", str(nproc)),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def losses(run_dir: Path) -> dict[int, float]:
    """Per-step training loss; for steps logged twice (resume), the later record."""
    return {r["step"]: r["loss"] for r in read_metrics(run_dir) if r["kind"] == "train"}


@pytest.mark.parametrize("parallel, nproc, accum", [("none", 1, 1), ("ddp", 2, 2), ("fsdp", 2, 1)])
def test_stop_and_resume_is_bitwise_identical(tmp_path, tiny_data_dir, parallel, nproc, accum):
    """DDP runs with 2 micro-batches per step, so the no_sync accumulation path is covered too."""
    train = {"parallel": parallel, "grad_accum_steps": accum}
    full = write_config(tmp_path / "full.yaml", tiny_run_config(tmp_path, tiny_data_dir, "full", **train))
    r = run_train(full, nproc)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    ref = losses(tmp_path / "runs" / "full")
    assert sorted(ref) == list(range(1, 9))

    part = write_config(tmp_path / "part.yaml", tiny_run_config(tmp_path, tiny_data_dir, "part", **train))
    # A preemption warning (SIGUSR1) reaches the last rank during step 5: checkpoint at 5, exit 75.
    r1 = run_train(part, nproc, {"MLTRAIN_FAULT": f"stop:5:{nproc - 1}"})
    assert r1.returncode == 75, r1.stdout[-3000:] + r1.stderr[-3000:]
    run_dir = tmp_path / "runs" / "part"
    assert (run_dir / "control" / "exit_reason").read_text().strip() == "preempted"
    assert max(losses(run_dir)) == 5
    assert (run_dir / "checkpoints" / "step_00000005" / "COMMITTED").is_file()
    r2 = run_train(part, nproc, {"MLTRAIN_FAULT": f"stop:5:{nproc - 1}"})  # fault_done: not again
    assert r2.returncode == 0, r2.stdout[-3000:] + r2.stderr[-3000:]
    assert "resumed from" in r2.stdout
    got = losses(run_dir)
    starts = [r for r in read_metrics(run_dir) if r["kind"] == "start"]
    assert [s["step"] for s in starts] == [0, 5]
    for step in range(6, 9):
        assert got[step] == ref[step], f"step {step}: resumed {got[step]!r} != uninterrupted {ref[step]!r}"
    for step in range(1, 6):
        assert got[step] == ref[step]


def test_missing_data_is_one_line_and_nonzero_exit(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", tiny_run_config(tmp_path, tmp_path / "nope"))
    r = run_train(cfg, 2)
    assert r.returncode == 1
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "no prepared data" in lines[0] and "Traceback" not in r.stderr
