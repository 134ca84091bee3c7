"""Checkpoints on a file system, under `<run>/checkpoints/`: the storage side of CheckpointManager's
save/commit protocol (train/checkpoint.py). A step is written into `step_N.tmp/`, each rank hashes the
files it wrote, rank 0 writes the marker last and renames the directory to `step_N`."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch

from mltrain.checkpoint_rule import MARKER, TRAINER_STATE, step_dir_name
from mltrain.fsutil import atomic_write
from mltrain.train.checkpoint import (
    Warn,
    _ckpt_files,
    _describe_failure,
    _fsync_dir,
    _owner,
    check_checkpoint,
    find_checkpoints,
    hash_files,
)


class LocalBackend:
    """Checkpoints as directories under `<run>/checkpoints/`: written into `step_N.tmp/`, hashed by the
    ranks that wrote each file, the marker written last, then renamed to `step_N`."""

    hashes_on_commit = True
    commit_errors: tuple[type[BaseException], ...] = (OSError,)
    in_background = "writing in background"

    def __init__(self, root: Path, warn: Warn) -> None:
        self.root = root
        self.warn = warn

    def attempt(self, step: int) -> tuple[Path, Path]:
        return self.root / (step_dir_name(step) + ".tmp"), self.root / step_dir_name(step)

    def prepare(self, tmp: Path, final: Path) -> str | None:
        """An empty `step_N.tmp/` (a crashed save's is cleared); None, or why it cannot be made (a full
        disk, a read-only mount), which all ranks then treat as a failed save instead of rank 0 raising
        while its peers wait in the collective."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        except OSError as e:
            return _describe_failure(e, self.root)
        return None

    def write_rank_state(self, tmp: Path, rank: int, rank_state: dict[str, Any]) -> None:
        torch.save(rank_state, tmp / f"rank_{rank:05d}.pt")

    def dcp_target(self, tmp: Path) -> dict[str, Any]:
        return {"checkpoint_id": str(tmp)}

    def describe(self, e: BaseException) -> str:
        return _describe_failure(e, self.root)

    describe_commit = describe

    def drop(self, tmp: Path) -> None:
        shutil.rmtree(tmp, ignore_errors=True)

    def rank_hashes(self, tmp: Path, rank: int, world_size: int) -> dict[str, Any] | str:
        """The files this rank wrote, hashed while they are still in its page cache (or why not)."""
        try:
            return hash_files(tmp, [r for r in _ckpt_files(tmp) if _owner(r, world_size) == rank])
        except OSError as e:
            return _describe_failure(e, self.root)

    def add_trainer_state(self, tmp: Path, trainer_state: dict[str, Any], entries: dict[str, Any]) -> None:
        """Write trainer_state.json and hash it with every file no rank hashed (the DCP metadata)."""
        (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
        entries.update(hash_files(tmp, [r for r in _ckpt_files(tmp) if r not in entries]))

    def publish(self, tmp: Path, final: Path, marker: dict[str, Any]) -> None:
        atomic_write(tmp / MARKER, json.dumps(marker))
        _fsync_dir(tmp)
        self._replace(tmp, final)
        _fsync_dir(self.root)

    def _replace(self, tmp: Path, final: Path) -> None:
        """Rename the finished temp dir to `final`. A `final` already there is a leftover of another
        attempt at this step (damaged, uncommitted, or from before a resume from an older step): it is
        moved aside first and deleted only once the new one is in place, never blocking the save."""
        if not final.exists():
            os.replace(tmp, final)
            return
        why = check_checkpoint(final, deep=False) or "written by an earlier attempt at this step"
        old = final.with_name(final.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(final, old)
        try:
            os.replace(tmp, final)
        except OSError:
            os.replace(old, final)  # put the previous copy back: the caller says it is kept
            raise
        shutil.rmtree(old, ignore_errors=True)
        self.warn(f"replaced {final.name} ({why}) with this save")

    def prune(self, keep_last: int, newest: Path) -> None:
        committed = find_checkpoints(self.root.parent, deep=False)
        for _, path in committed[: max(0, len(committed) - keep_last)]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in [*self.root.glob("step_*.tmp"), *self.root.glob("step_*.old")]:
            shutil.rmtree(stale, ignore_errors=True)

    def saved_to(self, final: Path) -> str:
        return ""
