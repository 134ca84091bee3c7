"""The example Hugging Face Trainer script under `mltrain train --nproc 2` (torchrun, DDP over gloo, tiny random
Llama): SIGUSR1 to the launcher mid-run -> checkpoint -> exit 75 -> run again -> resumes from that step and
finishes; `mltrain status` shows its steps, loss and the restart. DeepSpeed ZeRO-2 (a test dependency) is stopped
and resumed the same way, loss for loss."""

from __future__ import annotations

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


def _finish(run_yaml: Path, env: dict | None = None) -> tuple[int, str]:
    proc = _train(run_yaml, env)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    return proc.returncode, out


def _losses(run_dir: Path) -> dict[int, float]:
    """step -> loss of the run's train records (a resumed step's last record wins)."""
    return {r["step"]: r["loss"] for r in _records(run_dir) if r["kind"] == "train"}


def test_stop_checkpoint_exit75_resume_and_status_fresh_runs_alike_finished_run_trains_nothing(tmp_path):
    """SIGUSR1 mid-run -> checkpoint -> exit 75 -> resume -> done, with status and report. A second fresh run
    alongside (`ref`, not stopped) gives the same losses as the first start of `hf` (the example builds its
    model after the seed is set, so both start from the same weights); relaunching `ref` once it finished
    (checkpoint-14 of a 14-step run) says so and trains nothing: no new step, checkpoint or start."""
    args = ["--max_steps", "14", "--save_steps", "100", "--model", "qwen2"]
    run_yaml = _run_yaml(tmp_path, "hf", [*args, "--slow_step_s", "0.25"])
    ref_yaml, ref_dir = _run_yaml(tmp_path, "ref", args), tmp_path / "runs" / "ref"
    run_dir = tmp_path / "runs" / "hf"
    proc = _train(run_yaml)
    ref = _train(ref_yaml)  # side by side: half the wall time
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
    # status reads a script's checkpoint-N dirs too: the step total and the step it resumes from, not "N/?"
    stopped = status.run_status(run_dir)
    assert stopped.total_steps == 14 and stopped.ckpt_step == stop_step, stopped
    assert f"from step {stop_step}" in stopped.explanation, stopped.explanation
    first = _losses(run_dir)  # the fresh start of hf, before its resume

    ref_out, _ = ref.communicate(timeout=TIMEOUT_S)
    assert ref.returncode == 0, ref_out[-3000:]
    ref_losses = _losses(ref_dir)
    assert sorted(ref_losses) == list(range(1, 15)) and sorted(first) == list(range(1, stop_step + 1))
    assert first == {step: ref_losses[step] for step in first}  # two fresh runs start alike
    ref_ckpts = sorted(p.name for p in (ref_dir / "checkpoints").iterdir())
    assert ref_ckpts == ["checkpoint-14"]

    proc = _train(run_yaml)
    again = _train(ref_yaml)  # the finished run, relaunched
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 0, out[-3000:]
    ref_out, _ = again.communicate(timeout=TIMEOUT_S)
    assert again.returncode == 0, ref_out[-3000:]
    assert "already finished: step 14 of 14 (checkpoint-14); nothing to train" in ref_out, ref_out[-3000:]
    assert sorted(p.name for p in (ref_dir / "checkpoints").iterdir()) == ref_ckpts
    assert _losses(ref_dir) == ref_losses
    assert [r["kind"] for r in _records(ref_dir)].count("start") == 1  # no restart to count

    recs = _records(run_dir)
    starts = [r for r in recs if r["kind"] == "start"]
    assert [s["step"] for s in starts] == [0, stop_step]  # resumed from the checkpoint, not from 0
    assert starts[1]["resumed_from"] == str(ckpt)
    second = recs[recs.index(starts[1]) :]
    steps = [r["step"] for r in second if r["kind"] == "train"]
    assert steps[0] == stop_step + 1 and steps[-1] == 14
    assert [r["reason"] for r in recs if r["kind"] == "exit"] == ["preempted", "done"]
    assert any(r["kind"] == "eval" and r["val_loss"] > 0 for r in recs)

    shown = mltrain_status(run_dir, str(ref_dir))
    header = next(line.split() for line in shown.splitlines() if line.startswith("run "))
    row = next(line.split() for line in shown.splitlines() if line.startswith("hf "))
    cells = dict(zip(header, row, strict=False))
    assert cells["state"] == "done" and cells["step"] == "14/14" and cells["rst"] == "1", shown
    assert 0 < float(cells["loss"]) < 6, shown
    ref_row = next(line.split() for line in shown.splitlines() if line.startswith("ref "))
    assert "done" in ref_row and "14/14" in ref_row, ref_row
    rep = subprocess.run([sys.executable, "-m", "mltrain", "report", str(run_dir)], capture_output=True, text=True)
    assert rep.returncode == 0 and (run_dir / "report.png").is_file(), rep.stderr
    assert "restarts" in rep.stdout and "goodput" in rep.stdout


def test_cpu_trainer_that_joined_no_process_group_is_refused(tmp_path):
    """An HF Trainer script on CPU without use_cpu=True: each rank trained alone (not parallel: no DDP), on all
    the data, with no word. The callback checks the process group and the Trainer's parallel mode against
    WORLD_SIZE at train begin: one line, exit 2 (a usage error: never restarted), nothing trained."""
    text = (EXAMPLE / "train.py").read_text()
    script = tmp_path / "train_no_use_cpu.py"
    script.write_text(text.replace("use_cpu=not cuda,", ""))
    assert script.read_text() != text
    run_yaml = tmp_path / "alone.yaml"
    run_yaml.write_text(
        json.dumps(
            {"name": "alone", "base_dir": str(tmp_path), "script": {"path": str(script), "args": ["--max_steps", "3"]}}
        )
    )
    run_dir = tmp_path / "runs" / "alone"
    rc, out = _finish(run_yaml)
    assert rc == 2, out[-3000:]
    line = next(line for line in out.splitlines() if "WORLD_SIZE=" in line)
    assert "WORLD_SIZE=2" in line and "train alone" in line and "use_cpu=True" in line, line
    # one line per rank, no traceback of ours (torchrun still prints its ChildFailedError for the exit 2)
    assert "ConfigError" not in out and "hf_trainer.py" not in out, out[-3000:]
    assert not any(r["kind"] == "train" for r in _records(run_dir))
    assert rundir.read_exit_reason(run_dir) == "config_error"
    assert "use_cpu=True" in (run_dir / rundir.EXIT_MESSAGE_FILE).read_text()


DS_ENV = {"DS_ACCELERATOR": "cpu"}


def _ds_args(slow_step_s: float) -> list[str]:
    ds = str(EXAMPLE / "ds_config.json")
    return ["--max_steps", "6", "--save_steps", "100", "--deepspeed", ds, "--slow_step_s", str(slow_step_s)]


def test_deepspeed_zero2_stop_resume_matches_an_uninterrupted_run(tmp_path):
    """The example with its ds_config.json (ZeRO-2) on 2 CPU processes (DeepSpeed over gloo): USR1 mid-run ->
    DeepSpeed checkpoint -> exit 75 -> resume; the losses after the resume are those of an uninterrupted run
    (run alongside)."""
    ref_yaml, ref_dir = _run_yaml(tmp_path, "dsref", _ds_args(0.0)), tmp_path / "runs" / "dsref"
    run_yaml, run_dir = _run_yaml(tmp_path, "ds", _ds_args(0.5)), tmp_path / "runs" / "ds"
    ref = _train(ref_yaml, DS_ENV)
    proc = _train(run_yaml, DS_ENV)
    deadline = time.time() + TIMEOUT_S
    while time.time() < deadline and proc.poll() is None:
        if any(r.get("kind") == "train" and r["step"] >= 2 for r in _records(run_dir)):
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=TIMEOUT_S)
    assert proc.returncode == 75, out[-3000:]
    stop = [r for r in _records(run_dir) if r["kind"] == "exit"][-1]["step"]
    assert 2 <= stop < 6, out[-3000:]
    ckpt = run_dir / "checkpoints" / f"checkpoint-{stop}"
    assert (ckpt / f"global_step{stop}").is_dir(), out[-3000:]  # DeepSpeed's engine saved it, not the plain Trainer
    assert runtime.latest_checkpoint(ckpt.parent) == str(ckpt)

    rc, out = _finish(run_yaml, DS_ENV)
    assert rc == 0, out[-3000:]
    ref_out, _ = ref.communicate(timeout=TIMEOUT_S)
    assert ref.returncode == 0, ref_out[-3000:]
    starts = [r for r in _records(run_dir) if r["kind"] == "start"]
    assert [s["step"] for s in starts] == [0, stop]
    expected = _losses(ref_dir)
    assert sorted(expected) == list(range(1, 7))
    assert _losses(run_dir) == expected
