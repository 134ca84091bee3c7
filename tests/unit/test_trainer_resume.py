"""Trainer-level resume in one process: the RNG state and the loader position come back."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from tests.helpers import tiny_run_config

from mltrain.config import RunConfig
from mltrain.train.distributed import DistInfo
from mltrain.train.trainer import Trainer


def draws() -> tuple:
    return torch.rand(4).tolist(), np.random.rand(4).tolist(), [random.random() for _ in range(4)]


@pytest.mark.slow
def test_resume_restores_torch_numpy_and_python_rng(tmp_path, tiny_data_dir):
    """Whatever draws from the global RNGs after a resume (dropout, sampling, augmentation) must see the
    same numbers as the uninterrupted run: the RNG states saved with the checkpoint are restored."""
    cfg = RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, "rng", max_steps=4))
    info = DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    t = Trainer(cfg, info)
    t.train_step()
    draws()  # something between steps draws from every global RNG, as dropout would
    t.train_step()
    assert t.save()
    expected = draws()  # what the uninterrupted run draws next
    torch.manual_seed(99)
    np.random.seed(99)
    random.seed(99)
    resumed = Trainer(cfg, info)  # builds (and seeds) a fresh model, then resumes from step 2
    assert resumed.step == 2
    assert draws() == expected
    assert resumed.loader.state_dict() == {**t.loader.state_dict()}


# --------------------------------------------------------------------------- a resume with a changed config


def _start_records(run_dir) -> list[dict]:
    import json

    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "start"]


@pytest.mark.usefixtures("keep_signal_handlers")
def test_resume_says_and_records_what_changed_since_the_checkpoint(tmp_path, tiny_data_dir, capsys):
    """`--set train.lr=...` on a resume changes the schedule from the next step: the start says so in one
    line, names every changed key old -> new, and the start record in metrics.jsonl keeps it."""
    from mltrain.train.trainer import run_training

    def cfg(**train) -> RunConfig:
        return RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, "chg", **train))

    assert run_training(cfg(max_steps=3, lr=3e-3)) == 0
    assert "config changed" not in capsys.readouterr().out  # a fresh start has nothing to compare
    assert run_training(cfg(max_steps=5, lr=1e-3)) == 0
    out = capsys.readouterr().out
    changed = [line for line in out.splitlines() if "config changed" in line]
    assert changed == [
        "[mltrain] resume: config changed since the checkpoint (step 3): train.max_steps 3 -> 5, "
        "train.lr 0.003 -> 0.001"
    ]
    starts = _start_records(tmp_path / "runs" / "chg")
    assert "config_changes" not in starts[0]
    assert starts[1]["config_changes"] == {"train.max_steps": [3, 5], "train.lr": [0.003, 0.001]}
    # the same config again: nothing to say, nothing recorded
    assert run_training(cfg(max_steps=6, lr=1e-3)) == 0
    out = capsys.readouterr().out
    assert "[mltrain] resume: config changed since the checkpoint (step 5): train.max_steps 5 -> 6" in out
    assert run_training(cfg(max_steps=6, lr=1e-3)) == 0
    assert "config changed" not in capsys.readouterr().out
    assert "config_changes" not in _start_records(tmp_path / "runs" / "chg")[-1]


@pytest.mark.usefixtures("keep_signal_handlers")
def test_resume_with_another_grad_accum_names_the_new_global_batch(tmp_path, tiny_data_dir, capsys):
    """Same ranks and micro batch but another grad_accum_steps: the global batch (and so the tokens per
    step of the schedule) changes; the line says from what to what."""
    from mltrain.train.trainer import run_training

    def cfg(**train) -> RunConfig:
        return RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, "acc", **train))

    assert run_training(cfg(max_steps=3)) == 0
    capsys.readouterr()
    assert run_training(cfg(max_steps=4, grad_accum_steps=2)) == 0
    (line,) = [x for x in capsys.readouterr().out.splitlines() if "config changed" in x]
    assert line == (
        "[mltrain] resume: config changed since the checkpoint (step 3): train.grad_accum_steps 1 -> 2, "
        "train.max_steps 3 -> 4; global batch 4 -> 8 sequences per step"
    )
    assert _start_records(tmp_path / "runs" / "acc")[-1]["config_changes"]["train.grad_accum_steps"] == [1, 2]


@pytest.mark.usefixtures("keep_signal_handlers")
def test_resume_with_another_micro_batch_keeps_the_global_batch_and_says_from_what(tmp_path, tiny_data_dir, capsys):
    """Same ranks, another micro batch: grad_accum keeps the global batch, and the line names the layout the
    checkpoint was written with (not "another world size": the world size is the same)."""
    from mltrain.train.trainer import run_training

    def cfg(**train) -> RunConfig:
        return RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, "mb", **train))

    assert run_training(cfg(max_steps=3)) == 0
    capsys.readouterr()
    assert run_training(cfg(max_steps=4, micro_batch_size=2)) == 0
    out = capsys.readouterr().out
    assert (
        "[mltrain] step_00000003 was written by 1 rank(s) x micro batch 4: grad_accum_steps 1 -> 2 on 1 rank(s) "
        "keeps its global batch of 4 sequences\n" in out
    )
    assert (
        "[mltrain] resume: config changed since the checkpoint (step 3): train.micro_batch_size 4 -> 2, "
        "train.max_steps 3 -> 4\n" in out
    )  # no global batch note: it did not change


def test_config_changes_and_the_config_yaml_fallback(tmp_path, tiny_data_dir):
    """Only keys both configs have are compared; a checkpoint without its config falls back to config.yaml."""
    from mltrain.train.trainer import config_changes, describe_changes, resumed_config, write_config

    old = {"seed": 1, "train": {"lr": 0.1, "tags": ["a"], "gone": 3}, "data": {"dir": "d"}}
    new = {"seed": 2, "train": {"lr": 0.1, "tags": ["a", "b"], "added": True}, "data": {"dir": "d"}}
    assert config_changes(old, new) == {"seed": [1, 2], "train.tags": [["a"], ["a", "b"]]}
    assert describe_changes({"a": [None, True], "b": ["ddp", "fsdp"]}) == "a null -> true, b ddp -> fsdp"
    many = {f"k{i}": [i, i + 1] for i in range(10)}
    assert describe_changes(many).endswith("k7 7 -> 8, 2 more (metrics.jsonl, start record)")

    cfg = RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, "fb"))
    assert resumed_config(cfg, {}) == (None, "")  # neither: nothing to compare
    write_config(cfg)
    saved, source = resumed_config(cfg, {"step": 3})
    assert source == "the run dir's config.yaml" and config_changes(saved, cfg.model_dump(mode="json")) == {}
    assert resumed_config(cfg, {"config": {"seed": 5}}) == ({"seed": 5}, "the checkpoint")


@pytest.mark.usefixtures("keep_signal_handlers")
def test_resume_switched_off_says_it_starts_over(tmp_path, tiny_data_dir, capsys):
    """checkpoint.resume: false over committed checkpoints trains from step 0 again: said, not silent."""
    from mltrain.train.trainer import run_training

    def cfg(resume: bool) -> RunConfig:
        data = tiny_run_config(tmp_path, tiny_data_dir, "over", max_steps=3)
        data["checkpoint"]["resume"] = resume
        return RunConfig.model_validate(data)

    assert run_training(cfg(True)) == 0
    assert "checkpoint.resume is false" not in capsys.readouterr().out
    assert run_training(cfg(False)) == 0
    out = capsys.readouterr().out
    assert "[mltrain] checkpoint.resume is false: training from step 0, not from the committed step 3\n" in out
    assert "config changed" not in out  # not a resume: nothing is compared


def test_a_block_added_or_removed_is_a_change():
    from mltrain.train.trainer import config_changes, describe_changes

    with_block = {"train": {"lr": 0.1}, "parallel": {"tp": 2, "dp_shard": -1}}
    without = {"train": {"lr": 0.1}, "parallel": None}
    assert config_changes(with_block, without) == {"parallel": [{"tp": 2, "dp_shard": -1}, None]}
    assert config_changes(without, with_block) == {"parallel": [None, {"tp": 2, "dp_shard": -1}]}
    assert describe_changes(config_changes(with_block, without)) == 'parallel {"tp": 2, "dp_shard": -1} -> null'
    assert config_changes(with_block, with_block) == {} and config_changes(without, without) == {}
