"""When one rank's watchdog catches a hang, it writes control/exit_reason "hang" and exits; the other ranks
then get a collective error ("Connection closed by peer") and leave through the trainer's failure path. That
path must not write "failed" over the hang: the batch script would take a stuck collective for a crashed
rank, restart in place and blame a node (seen in the real-Slurm hang test under load: exit_reason=failed,
cause rank_failure). The trainer runs in-process on one rank; its training loop is replaced by one that
does what the peer's watchdog and the collective error do, in that order."""

from __future__ import annotations

import os
import time

import pytest
from tests.helpers import tiny_run_config

from mltrain import exit_codes, rundir
from mltrain.config import RunConfig
from mltrain.train import faults, trainer


def _run_failing(tmp_path, tiny_data_dir, monkeypatch, peer_hangs: bool) -> str | None:
    for k in ("SLURM_JOB_ID", "MLTRAIN_FAULT"):
        monkeypatch.delenv(k, raising=False)
    cfg = RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, "h", max_steps=5))

    def loop(*args, **kwargs):
        if peer_hangs:  # the hung rank's watchdog, in another process on the shared run dir
            faults.write_exit_reason(cfg.run_dir, exit_codes.REASON_HANG)
        raise RuntimeError("Connection closed by peer [127.0.0.1]:43151")  # what gloo raises on the others

    monkeypatch.setattr(trainer, "train_loop", loop)
    with pytest.raises(RuntimeError, match="Connection closed by peer"):
        trainer.run_training(cfg)
    return rundir.read_exit_reason(cfg.run_dir)


def test_a_peers_hang_is_not_overwritten_by_the_failure_it_causes(tmp_path, tiny_data_dir, monkeypatch):
    assert _run_failing(tmp_path, tiny_data_dir, monkeypatch, peer_hangs=True) == exit_codes.REASON_HANG


def test_a_failure_without_a_hang_is_failed(tmp_path, tiny_data_dir, monkeypatch):
    assert _run_failing(tmp_path, tiny_data_dir, monkeypatch, peer_hangs=False) == exit_codes.REASON_FAILED


def test_peer_hung_only_counts_a_hang_written_in_this_attempt(tmp_path):
    (tmp_path / "control").mkdir()
    path = tmp_path / rundir.EXIT_REASON_FILE
    assert not faults.peer_hung(tmp_path, time.time())  # nothing written
    t0 = time.time()
    path.write_text("hang\n")
    assert faults.peer_hung(tmp_path, t0)
    os.utime(path, (t0 - 60, t0 - 60))  # an earlier attempt's hang
    assert not faults.peer_hung(tmp_path, t0)
    path.write_text("failed\n")
    assert not faults.peer_hung(tmp_path, t0)
