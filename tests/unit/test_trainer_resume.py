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
