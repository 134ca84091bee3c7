"""A start refused after the prechecks (here: a checkpoint the trainer cannot resume) leaves config.yaml
byte-identical and keeps a finished run's recorded outcome; a new run records config_error."""

from __future__ import annotations

import pytest
from tests.helpers import tiny_run_config

from mltrain.config import RunConfig
from mltrain.errors import CheckpointError
from mltrain.train import trainer as T

pytestmark = pytest.mark.usefixtures("keep_signal_handlers")  # conftest.py: the trainer installs handlers


def refusing_trainer(cfg, info):
    raise CheckpointError("loader state: world_size was 2 when saved, now 1")


def cfg_for(tmp_path, data, **train) -> RunConfig:
    return RunConfig.model_validate(tiny_run_config(tmp_path, data, "r", **train))


def test_refused_resume_keeps_config_and_outcome(tmp_path, tiny_data_dir, monkeypatch):
    old = cfg_for(tmp_path, tiny_data_dir, max_steps=20)
    T.write_config(old)
    (old.run_dir / "control").mkdir()
    (old.run_dir / "control" / "exit_reason").write_text("done\n")
    before = (old.run_dir / "config.yaml").read_bytes()
    monkeypatch.setattr(T, "Trainer", refusing_trainer)
    with pytest.raises(CheckpointError):
        T.run_training(cfg_for(tmp_path, tiny_data_dir, max_steps=90))
    assert (old.run_dir / "config.yaml").read_bytes() == before
    assert (old.run_dir / "control" / "exit_reason").read_text() == "done\n"
    assert not (old.run_dir / "control" / "exit_message").exists()
    assert not (old.run_dir / "control" / "lease.json").exists()  # released


def test_refused_new_run_records_config_error(tmp_path, tiny_data_dir, monkeypatch):
    monkeypatch.setattr(T, "Trainer", refusing_trainer)
    cfg = cfg_for(tmp_path, tiny_data_dir)
    with pytest.raises(CheckpointError):
        T.run_training(cfg)
    assert not (cfg.run_dir / "config.yaml").exists()
    assert (cfg.run_dir / "control" / "exit_reason").read_text().strip() == "config_error"
    assert "world_size was 2" in (cfg.run_dir / "control" / "exit_message").read_text()
