"""Which precision each parallel mode actually trains in (a fast config must not silently run fp32)."""

import pytest
import torch
from tests.helpers import tiny_run_config

from mltrain.config import RunConfig
from mltrain.train.distributed import DistInfo
from mltrain.train.trainer import Trainer


@pytest.mark.parametrize("parallel", ["none", "ddp", "fsdp"])
def test_single_process_bf16_uses_autocast_in_every_mode(tmp_path, tiny_data_dir, parallel):
    cfg = RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, parallel=parallel, dtype="bf16"))
    trainer = Trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    ctx = trainer._autocast()
    assert isinstance(ctx, torch.autocast) and ctx.fast_dtype == torch.bfloat16
    with ctx:
        x, y = trainer.loader.next_batch()
        logits = trainer.module(x)
    assert logits.dtype == torch.bfloat16


def test_fp32_has_no_autocast(tmp_path, tiny_data_dir):
    cfg = RunConfig.model_validate(tiny_run_config(tmp_path, tiny_data_dir, dtype="fp32"))
    trainer = Trainer(cfg, DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu")))
    assert not isinstance(trainer._autocast(), torch.autocast)
