"""The example Hugging Face Trainer script under `mltrain train --nproc 2` (torchrun, DDP over gloo, tiny random
Llama): SIGUSR1 to the launcher mid-run -> checkpoint -> exit 75 -> run again -> resumes from that step and
finishes; `mltrain status` shows its steps, loss and the restart. With DeepSpeed installed, ZeRO-2 too."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tests.helpers import mltrain_status

from mltrain import rundir, runtime
from mltrain.launch import status

pytest.importorskip("transformers")
pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_trainer"
TIMEOUT_S = 240


def _run_yaml(tmp_path: Path, name: str, args: list[str]) -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        json.dumps(
            {"name": name, "base_dir": str(tmp_path), "script": {"path": str(EXAMPLE / "train.py"), "args": args}}
        )
    )
    return p


def _records(run_dir: Path) -> list[dict]:
    try:
        lines = (run_dir / rundir.METRICS_FILE).read_text().splitlines()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in lines if line.strip()]


def _train(run_yaml: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "mltrain", "train", str(run_yaml), "--nproc", "2"],
        cwd=run_yaml.parent,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_stop_checkpoint_exit75_resume_and_status(tmp_path):
    run_yaml = _run_yaml(
        tmp_path, "hf", ["--max_steps", "14", "--save_steps", "100", "--slow_step_s", "0.25", "--model", "qwen2"]
    )
    run_dir = tmp_path / "runs" / "hf"
    proc = _train(run_yaml)
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        if any(r.get("kind") == "train" and r["step"] >= 3 for r in _records(run_dir)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)  # what Slurm sends before preemption / the time limit
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 75, out[-3000:]
    recs = _records(run_dir)
    exit1 = [r for r in recs if r["kind"] == "exit"][-1]
    stop_step = exit1["step"]
    assert exit1["reason"] == "preempted" and 3 <= stop_step < 14, out[-3000:]
    ckpt = run_dir / "checkpoints" / f"checkpoint-{stop_step}"
    assert (ckpt / runtime.CHECKPOINT_COMPLETE).is_file()
    assert runtime.latest_checkpoint(run_dir / "checkpoints") == str(ckpt)
    assert rundir.read_exit_reason(run_dir) == "preempted"
    assert not (run_dir / rundir.STOP_FILE).exists()  # honoured, so the restart is not stopped at once
    # Before: status showed "N/?" and "mltrain train from step 0" for a script run (it knew only step_N dirs).
    stopped = status.run_status(run_dir)
    assert stopped.total_steps == 14 and stopped.ckpt_step == stop_step, stopped
    assert f"from step {stop_step}" in stopped.explanation, stopped.explanation

    proc = _train(run_yaml)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-3000:]
    recs = _records(run_dir)
    starts = [r for r in recs if r["kind"] == "start"]
    assert [s["step"] for s in starts] == [0, stop_step]  # resumed from the checkpoint, not from 0
    assert starts[1]["resumed_from"] == str(ckpt)
    second = recs[recs.index(starts[1]) :]
    steps = [r["step"] for r in second if r["kind"] == "train"]
    assert steps[0] == stop_step + 1 and steps[-1] == 14
    assert [r["reason"] for r in recs if r["kind"] == "exit"] == ["preempted", "done"]
    assert any(r["kind"] == "eval" and r["val_loss"] > 0 for r in recs)

    shown = mltrain_status(run_dir)
    row = next(line.split() for line in shown.splitlines() if line.startswith("hf "))
    header = next(line.split() for line in shown.splitlines() if line.startswith("run "))
    cells = dict(zip(header, row, strict=False))
    assert cells["state"] == "done" and cells["step"] == "14/14" and cells["rst"] == "1", shown
    assert 0 < float(cells["loss"]) < 6, shown
    rep = subprocess.run([sys.executable, "-m", "mltrain", "report", str(run_dir)], capture_output=True, text=True)
    assert rep.returncode == 0 and (run_dir / "report.png").is_file(), rep.stderr
    assert "restarts" in rep.stdout and "goodput" in rep.stdout


@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed is not installed (optional)")
def test_deepspeed_zero2_on_cpu(tmp_path):
    run_yaml = _run_yaml(
        tmp_path, "ds", ["--max_steps", "4", "--save_steps", "2", "--deepspeed", str(EXAMPLE / "ds_config.json")]
    )
    proc = _train(run_yaml, env={"DS_ACCELERATOR": "cpu"})
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-3000:]
    ckpt = tmp_path / "runs" / "ds" / "checkpoints" / "checkpoint-4"
    assert (ckpt / "global_step4").is_dir(), out[-3000:]  # written by DeepSpeed's engine, not the plain Trainer
    assert runtime.latest_checkpoint(ckpt.parent) == str(ckpt)
