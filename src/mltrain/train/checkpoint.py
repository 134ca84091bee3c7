"""Atomic, resumable distributed checkpoints on torch.distributed.checkpoint (DCP).

A checkpoint is written into `checkpoints/step_N.tmp/`; when every rank has finished, rank 0
writes `trainer_state.json`, records every file's size (and sha256 when the checkpoint is small
enough to hash cheaply) in the `COMMITTED` marker, and renames the directory to `step_N`.
A directory without a valid marker, or whose files disagree with it, is never resumed from: the
newest valid checkpoint is used and the bad one is named in a warning. A failed save (out of
disk, I/O error) removes its temp dir and leaves the previous checkpoint untouched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from mltrain.errors import CheckpointError
from mltrain.fsutil import atomic_write, file_sha256
from mltrain.rundir import CHECKPOINTS_DIR
from mltrain.train.distributed import any_rank

MARKER = "COMMITTED"
TRAINER_STATE = "trainer_state.json"
HASH_LIMIT_BYTES = 512 * 1024 * 1024  # hash every file below this total; above, sizes + metadata hash
_STEP_RE = re.compile(r"^step_(\d{8})$")
# One process without a process group is a supported DCP mode, not a mistake worth a warning.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

Warn = Callable[[str], None]


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def _file_manifest(ckpt: Path) -> dict[str, Any]:
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER)
    total = sum(p.stat().st_size for p in files)
    hash_all = total <= HASH_LIMIT_BYTES
    entries = {}
    for p in files:
        rel = str(p.relative_to(ckpt))
        entry: dict[str, Any] = {"size": p.stat().st_size}
        if hash_all or p.name in (".metadata", TRAINER_STATE):
            entry["sha256"] = file_sha256(p)
        entries[rel] = entry
    return {"files": entries, "total_bytes": total, "hashed": "all" if hash_all else "metadata"}


def _describe_failure(e: BaseException, where: Path) -> str:
    """One line for a failed save; says 'disk full' when that is why, which torch's own errors hide
    (a full disk surfaces as "unexpected pos 704 vs 598" from its zip writer)."""
    text = str(e).strip().splitlines()
    msg = f"{type(e).__name__}: {text[-1] if text else ''}".strip()
    try:
        free = shutil.disk_usage(where).free
    except OSError:
        return msg
    if free < 64 * 2**20:
        return f"disk full: {free / 2**20:.1f} MiB free on the file system of {where} ({msg})"
    return msg


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_checkpoint(ckpt: Path, deep: bool = True) -> str | None:
    """None when `ckpt` is a complete committed checkpoint, else the reason it is not."""
    marker = ckpt / MARKER
    if not marker.is_file():
        return "no COMMITTED marker (the save did not finish)"
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError) as e:
        return f"unreadable COMMITTED marker ({e})"
    for rel, entry in files.items():
        p = ckpt / rel
        if not p.is_file():
            return f"missing file {rel}"
        if p.stat().st_size != entry["size"]:
            return f"file {rel} has {p.stat().st_size} bytes, marker says {entry['size']}"
        if deep and "sha256" in entry and file_sha256(p) != entry["sha256"]:
            return f"file {rel} does not match its sha256"
    return None


def find_checkpoints(run_dir: Path, warn: Warn | None = None, deep: bool = True) -> list[tuple[int, Path]]:
    """Valid committed checkpoints of a run as (step, path), oldest first; invalid ones are warned about."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        m = _STEP_RE.match(p.name)
        if not m or not p.is_dir():
            continue
        problem = check_checkpoint(p, deep=deep)
        if problem:
            if warn:
                warn(f"skipping checkpoint {p}: {problem}")
            continue
        found.append((int(m.group(1)), p))
    return sorted(found)


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / TRAINER_STATE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / TRAINER_STATE}: unreadable: {e}") from None


def _checkpoint_tensor_shapes(ckpt: Path, prefix: str) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = FileSystemReader(str(ckpt)).read_metadata()
    out = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            out[key[len(prefix) :]] = tuple(md.size)
    return out


def check_model_fits(ckpt: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """Raise CheckpointError listing keys/shapes where `ckpt`'s model differs from `expected`."""
    have = _checkpoint_tensor_shapes(ckpt, "model.")
    problems = []
    for k in sorted(set(expected) - set(have)):
        problems.append(f"missing {k}")
    for k in sorted(set(have) - set(expected)):
        problems.append(f"unexpected {k}")
    for k in sorted(set(have) & set(expected)):
        if tuple(have[k]) != tuple(expected[k]):
            problems.append(f"{k}: checkpoint {list(have[k])} vs model {list(expected[k])}")
    if problems:
        shown = "; ".join(problems[:10]) + (f"; ... {len(problems) - 10} more" if len(problems) > 10 else "")
        raise CheckpointError(f"checkpoint {ckpt} does not fit the model config: {shown}")


def load_model_state_dict(ckpt: Path, model: torch.nn.Module) -> None:
    """Load only the model weights of a checkpoint into a plain (unsharded) module, one process.

    Used by export; DCP reshards from however many ranks wrote it.
    """
    import torch.distributed.checkpoint as dcp

    sd = model.state_dict()
    check_model_fits(ckpt, {k: tuple(v.shape) for k, v in sd.items()})
    state = {"model": sd}
    dcp.load(state, checkpoint_id=str(ckpt))
    model.load_state_dict(state["model"])


class CheckpointManager:
    """Owns saving, committing, pruning and resuming the run's checkpoints (all ranks call it)."""

    def __init__(
        self,
        run_dir: Path,
        keep_last: int,
        rank: int,
        world_size: int,
        async_save: bool = False,
        warn: Warn = print,
        info: Warn = print,
    ) -> None:
        self.root = Path(run_dir) / CHECKPOINTS_DIR
        self.keep_last = keep_last
        self.rank = rank
        self.world_size = world_size
        self.async_save = async_save
        self.warn = warn
        self.info = info
        self._pending: tuple[Future, Path, Path, dict[str, Any]] | None = None
        self.on_commit: Callable[[Path], None] | None = None  # rank 0, after each commit (checkpoint mirror)
        self._ckpt_pg = None
        if async_save and dist.is_initialized():
            # The background save gathers on its own group so it never races the training collectives.
            self._ckpt_pg = dist.new_group(backend="gloo")

    # ------------------------------------------------------------------ helpers
    def _barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def _all_ok(self, ok: bool) -> bool:
        return not any_rank(not ok)

    # ------------------------------------------------------------------ save
    def save(
        self, step: int, app_state: dict[str, Any], trainer_state: dict[str, Any], rank_state: dict[str, Any]
    ) -> bool:
        """Write step `step`. Returns False (with a warning) when the save failed; nothing is lost."""
        import torch.distributed.checkpoint as dcp

        self.wait()  # one checkpoint in flight at a time
        final = self.root / step_dir_name(step)
        tmp = self.root / (step_dir_name(step) + ".tmp")
        if final.exists():
            return True
        if self.rank == 0:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        ok = True
        err = ""
        t0 = time.perf_counter()
        try:
            torch.save(rank_state, tmp / f"rank_{self.rank:05d}.pt")
            if self.async_save:
                fut = dcp.async_save(app_state, checkpoint_id=str(tmp), process_group=self._ckpt_pg)
            else:
                dcp.save(app_state, checkpoint_id=str(tmp))
        except (Exception, CheckpointException) as e:  # DCP's gathered error is a BaseException
            ok, err = False, _describe_failure(e, self.root)
        if not self._agree_or_abandon(ok, tmp, f"checkpoint at step {step}", err):
            return False
        if self.async_save:
            self._pending = (fut, tmp, final, trainer_state)
            self.info(f"checkpoint step {step}: staged in {time.perf_counter() - t0:.2f}s, writing in background")
            return True
        ok = self._commit(tmp, final, trainer_state)
        if ok:
            self.info(f"checkpoint step {step} saved in {time.perf_counter() - t0:.2f}s")
        return ok

    def poll(self) -> None:
        """Commit a finished background save without blocking (call once per step)."""
        if self._pending is not None and self._pending[0].done():
            self.wait()

    def wait(self) -> bool:
        """Block until the in-flight background save (if any) is written, then commit it."""
        if self._pending is None:
            return True
        fut, tmp, final, trainer_state = self._pending
        self._pending = None
        ok = True
        err = ""
        try:
            fut.result()
        except (Exception, CheckpointException) as e:
            ok, err = False, _describe_failure(e, self.root)
        if not self._agree_or_abandon(ok, tmp, f"background checkpoint {final.name}", err):
            return False
        return self._commit(tmp, final, trainer_state)

    def _agree_or_abandon(self, ok: bool, tmp: Path, what: str, err: str) -> bool:
        """All ranks agree whether the write succeeded; if any failed, drop the temp dir and keep the
        previous checkpoint."""
        if self._all_ok(ok):
            return True
        if self.rank == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        self.warn(f"{what} failed ({err or 'on another rank'}); the previous checkpoint is kept")
        return False

    def _commit(self, tmp: Path, final: Path, trainer_state: dict[str, Any]) -> bool:
        self._barrier()  # every rank's files are on disk
        ok = True
        if self.rank == 0:
            try:
                (tmp / TRAINER_STATE).write_text(json.dumps(trainer_state, indent=1))
                manifest = _file_manifest(tmp)
                manifest.update(step=trainer_state.get("step"), world_size=self.world_size, time=time.time())
                atomic_write(tmp / MARKER, json.dumps(manifest))
                _fsync_dir(tmp)
                os.replace(tmp, final)
                _fsync_dir(self.root)
                self._prune()
                if self.on_commit is not None:
                    self.on_commit(final)
            except OSError as e:
                ok = False
                shutil.rmtree(tmp, ignore_errors=True)
                self.warn(
                    f"checkpoint {final.name} could not be committed ({_describe_failure(e, self.root)}); "
                    "the previous checkpoint is kept"
                )
        return self._all_ok(ok)

    def _prune(self) -> None:
        committed = find_checkpoints(self.root.parent, deep=False)
        for _, path in committed[: max(0, len(committed) - self.keep_last)]:
            shutil.rmtree(path, ignore_errors=True)
        for stale in self.root.glob("step_*.tmp"):
            shutil.rmtree(stale, ignore_errors=True)

    # ------------------------------------------------------------------ resume
    def latest(self) -> tuple[int, Path] | None:
        """The newest valid checkpoint, chosen on rank 0 and agreed on by every rank."""
        choice: list[Any] = [None]
        if self.rank == 0:
            found = find_checkpoints(self.root.parent, warn=self.warn)
            choice = [(found[-1][0], str(found[-1][1])) if found else None]
        if dist.is_initialized():
            dist.broadcast_object_list(choice, src=0)
        if choice[0] is None:
            return None
        return int(choice[0][0]), Path(choice[0][1])

    def load(
        self, ckpt: Path, app_state: dict[str, Any], expected_model_shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, Any]:
        """Load `app_state` in place from `ckpt`; returns (trainer_state, this rank's rank_state or {})."""
        import torch.distributed.checkpoint as dcp

        check_model_fits(ckpt, expected_model_shapes)
        dcp.load(app_state, checkpoint_id=str(ckpt))
        state = read_trainer_state(ckpt)
        rank_file = ckpt / f"rank_{self.rank:05d}.pt"
        state["_rank_state"] = torch.load(rank_file, weights_only=False) if rank_file.exists() else {}
        return state
