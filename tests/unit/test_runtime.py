"""mltrain.runtime: the API a user's script calls (run dir, stop requests, exit 75, checkpoints, metrics)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from mltrain import exit_codes, rundir, runstats, runtime


@pytest.fixture
def run_dir(tmp_path, monkeypatch) -> Path:
    d = tmp_path / "runs" / "r"
    monkeypatch.setenv(runtime.ENV_RUN_DIR, str(d))
    monkeypatch.delenv(runtime.ENV_CHECKPOINT_DIR, raising=False)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setattr(runtime, "_signalled", None)
    return d


def test_import_does_not_load_torch():
    code = "import sys, mltrain.runtime; assert 'torch' not in sys.modules, 'torch imported'; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "ok"


def test_run_and_checkpoint_dir_from_env(run_dir, monkeypatch):
    assert runtime.run_dir() == run_dir and run_dir.is_dir()
    assert runtime.checkpoint_dir() == run_dir / "checkpoints"
    monkeypatch.setenv(runtime.ENV_CHECKPOINT_DIR, "/elsewhere/ck")
    assert runtime.checkpoint_dir() == Path("/elsewhere/ck")


def test_stop_requested_by_the_trainers_stop_file(run_dir):
    assert not runtime.stop_requested()
    (run_dir / "control").mkdir(parents=True)
    (run_dir / rundir.STOP_FILE).write_text("")
    assert runtime.stop_file() == run_dir / rundir.STOP_FILE
    assert runtime.stop_requested()


def test_stop_requested_by_sigusr1_after_one_call(run_dir):
    old = signal.getsignal(signal.SIGUSR1), signal.getsignal(signal.SIGTERM)
    try:
        runtime.install_stop_handler()
        os.kill(os.getpid(), signal.SIGUSR1)  # without the handler this would kill pytest
        assert runtime.stop_requested() and runtime.stop_signal() == "SIGUSR1"
    finally:
        signal.signal(signal.SIGUSR1, old[0])
        signal.signal(signal.SIGTERM, old[1])


def test_exit_for_requeue_is_75_and_records_the_reason(run_dir):
    (run_dir / "control").mkdir(parents=True)
    (run_dir / rundir.STOP_FILE).write_text("")
    with pytest.raises(SystemExit) as e:
        runtime.exit_for_requeue()
    assert e.value.code == exit_codes.REQUEUE == 75
    assert rundir.read_exit_reason(run_dir) == exit_codes.REASON_PREEMPTED
    assert not (run_dir / rundir.STOP_FILE).exists()  # honoured: the next start is not stopped at once


def test_exit_for_requeue_of_rank_0_leaves_the_stop_file_to_the_other_ranks(run_dir, monkeypatch):
    """Two ranks under a launcher: rank 1 may not have polled the stop file yet when rank 0 leaves (a script
    that does not agree across ranks would run on to its end); the launcher removes the file afterwards."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    (run_dir / "control").mkdir(parents=True)
    (run_dir / rundir.STOP_FILE).write_text("")
    with pytest.raises(SystemExit) as e:
        runtime.exit_for_requeue()
    assert e.value.code == exit_codes.REQUEUE
    assert rundir.read_exit_reason(run_dir) == exit_codes.REASON_PREEMPTED
    assert (run_dir / rundir.STOP_FILE).exists()
    monkeypatch.setenv("RANK", "1")
    assert runtime.stop_requested()  # what rank 1 polls next


def _hf_ckpt(d: Path, step: int, *, state=True, weights="model.safetensors", marker=False) -> Path:
    p = d / f"checkpoint-{step}"
    p.mkdir(parents=True)
    if weights:
        (p / weights).write_bytes(b"w")
    if state:
        (p / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    if marker:
        (p / runtime.CHECKPOINT_COMPLETE).write_text(f"{step}\n")
    return p


def test_latest_checkpoint_skips_incomplete(tmp_path):
    d = tmp_path / "ck"
    assert runtime.latest_checkpoint(d) is None  # no dir yet: first start
    _hf_ckpt(d, 10)
    good = _hf_ckpt(d, 20, marker=True)
    _hf_ckpt(d, 30, state=False)  # killed before trainer_state.json: incomplete
    _hf_ckpt(d, 40, weights=None)  # no weights
    torn = _hf_ckpt(d, 50)
    (torn / "trainer_state.json").write_text('{"global_st')  # torn write
    (d / "checkpoint-60.tmp").mkdir()
    (d / "runs").mkdir()
    assert runtime.latest_checkpoint(d) == str(good)
    # step order, not name order: checkpoint-100 beats checkpoint-20
    newest = _hf_ckpt(d, 100)
    assert runtime.latest_checkpoint(d) == str(newest)


def test_complete_checkpoint_forms(tmp_path):
    sharded = tmp_path / "checkpoint-5"
    sharded.mkdir()
    (sharded / "trainer_state.json").write_text(json.dumps({"global_step": 5}))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}}
    (sharded / "model.safetensors.index.json").write_text(json.dumps(index))
    (sharded / "model-00001-of-00002.safetensors").write_bytes(b"1")
    assert not runtime.is_complete_checkpoint(sharded)  # a shard is missing
    (sharded / "model-00002-of-00002.safetensors").write_bytes(b"2")
    assert runtime.is_complete_checkpoint(sharded)
    ds = tmp_path / "checkpoint-7"  # DeepSpeed ZeRO-3 without 16-bit weights: global_stepN/ holds them
    (ds / "global_step7").mkdir(parents=True)
    (ds / "trainer_state.json").write_text(json.dumps({"global_step": 7}))
    assert runtime.is_complete_checkpoint(ds)
    wrong = tmp_path / "checkpoint-9"
    (wrong).mkdir()
    (wrong / "model.safetensors").write_bytes(b"w")
    (wrong / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    assert not runtime.is_complete_checkpoint(wrong)


def test_log_writes_the_trainers_record_format(run_dir):
    runtime.log_start(0)
    runtime.log(1, loss=5.0, tokens_per_s=1000.0, step_time_s=0.5, lr=1e-3)
    runtime.log(2, loss=float("nan"), tokens_per_s=1000.0, step_time_s=0.5)
    runtime.log_eval(2, val_loss=4.0)
    runtime.log_exit(2, exit_codes.REASON_DONE)
    recs = [json.loads(line) for line in (run_dir / rundir.METRICS_FILE).read_text().splitlines()]
    assert [r["kind"] for r in recs] == ["start", "train", "train", "eval", "exit"]
    assert all(isinstance(r["time"], float) for r in recs)
    assert recs[1] == {**recs[1], "step": 1, "loss": 5.0, "tokens_per_s": 1000.0, "step_time_s": 0.5}
    assert recs[2]["loss"] is None  # NaN is not JSON
    assert recs[0]["world_size"] >= 1 and recs[4]["reason"] == "done"
    # the project's shared figures read these records like the trainer's
    assert runstats.productive_seconds(recs) == pytest.approx(1.0)
    assert runstats.current_trains(recs)[-1]["step"] == 2


def test_only_rank0_writes(run_dir, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    runtime.log(1, loss=1.0)
    runtime.write_exit_reason(exit_codes.REASON_DONE)
    assert not (run_dir / rundir.METRICS_FILE).exists()
    assert rundir.read_exit_reason(run_dir) is None
