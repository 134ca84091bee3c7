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
    from mltrain.checkpoint_rule import step_dir_name
    from mltrain.train.s3_checkpoint import S3CheckpointManager

    mgr = S3CheckpointManager(url, run_dir, keep_last=1, rank=0, world_size=1, warn=warn, info=lambda m: None)
    picked: tuple[int, Any] | None = None
    if step is None:
        picked = mgr.latest()
        steps = mgr.store.steps() if picked is None else []
    else:  # a committed step (its marker is there) that fails a check is named; an absent or unfinished one is not
        steps = mgr.store.steps()
        name = step_dir_name(step)
        if any(s == step and complete for s, _, complete in steps):
            problem = mgr.check(name)
            if problem is None:
                picked = step, mgr.step(name)
            else:
                warn(f"skipping checkpoint {mgr.step(name)}: {problem}")
    if picked is None:
        have = [str(s) for s, _, complete in steps if complete]
        which = "" if step is None else f" for step {step}"
        raise CheckpointError(
            f"{url}: no committed checkpoint{which} (checkpoint.storage); have {', '.join(have) or 'none'}"
        )
    ckpt = picked[1]
    load_model_state_dict(ckpt, model, make_reader=lambda: mgr.storage_reader(ckpt))  # type: ignore[arg-type]
    return int(picked[0]), str(ckpt)
