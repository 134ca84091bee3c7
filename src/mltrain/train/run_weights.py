"""A run's trained weights, read in one process (export, eval, sample) from wherever the run keeps its
checkpoints: `<run>/checkpoints/`, or `checkpoint.storage` on S3. Either way the newest checkpoint that passes
every check (or the one of `step`) is used, and each newer one skipped is named with its reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from mltrain.config import RunConfig
from mltrain.errors import CheckpointError
from mltrain.train.checkpoint import Warn, load_model_state_dict, require_checkpoint


def load_run_weights(
    cfg: RunConfig, run_dir: Path, model: torch.nn.Module, step: int | None, warn: Warn
) -> tuple[int, str]:
    """Load the picked checkpoint's model weights into `model` (plain, unsharded); returns (step, where)."""
    if not cfg.checkpoint.storage:
        picked, ckpt = require_checkpoint(run_dir, warn, step)
        load_model_state_dict(ckpt, model)
        return picked, str(ckpt)
    return _load_from_s3(cfg.checkpoint.storage, run_dir, model, step, warn)


def _load_from_s3(url: str, run_dir: Path, model: torch.nn.Module, step: int | None, warn: Warn) -> tuple[int, str]:
    import torch.distributed.checkpoint as dcp

    from mltrain.checkpoint_rule import step_dir_name
    from mltrain.train.checkpoint import check_model_fits
    from mltrain.train.s3_checkpoint import S3CheckpointManager

    mgr = S3CheckpointManager(url, run_dir, keep_last=1, rank=0, world_size=1, warn=warn, info=lambda m: None)
    picked: tuple[int, Any] | None
    if step is None:
        picked = mgr.latest()
    else:
        problem = mgr.check(step_dir_name(step))
        if problem is not None and problem != "no COMMITTED marker (the save did not finish)":
            warn(f"skipping checkpoint {mgr.step(step_dir_name(step))}: {problem}")
        picked = (step, mgr.step(step_dir_name(step))) if problem is None else None
    if picked is None:
        have = [str(s) for s, _, complete in mgr.store.steps() if complete]
        which = "" if step is None else f" for step {step}"
        raise CheckpointError(
            f"{url}: no committed checkpoint{which} (checkpoint.storage); have {', '.join(have) or 'none'}"
        )
    sd = model.state_dict()
    reader = mgr.storage_reader(picked[1])
    check_model_fits(picked[1], {k: tuple(v.shape) for k, v in sd.items()}, reader=reader)  # type: ignore[arg-type]
    state = {"model": sd}
    dcp.load(state, storage_reader=mgr.storage_reader(picked[1]))
    model.load_state_dict(state["model"])
    return int(picked[0]), str(picked[1])
