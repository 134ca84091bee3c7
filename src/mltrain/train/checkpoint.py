"""Atomic, resumable distributed checkpoints on torch.distributed.checkpoint (DCP).

A checkpoint is written into `checkpoints/step_N.tmp/`. Right after the write each rank hashes the
files it wrote (xxh3-128: several GB/s, so every byte is covered at any size), rank 0 adds
`trainer_state.json` and the DCP metadata, records every file's size and hash in the `COMMITTED`
marker and renames the directory to `step_N` (replacing a damaged `step_N` left by an earlier
attempt). A directory without a valid marker, or whose files disagree with it in size or hash, is
never resumed from or exported: the newest valid checkpoint is used and each skipped one is named
with its reason. A failed save (out of disk, I/O error) removes its temp dir and leaves the
previous checkpoint untouched.

CheckpointManager holds that save/commit protocol once; where the bytes go is its backend: a directory
(train/local_checkpoint.py) or an S3 prefix (train/s3_checkpoint.py, which has no rename).
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
from typing import Any, Protocol

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.api import CheckpointException

from mltrain import checkpoint_rule
from mltrain.checkpoint_rule import MARKER, TRAINER_STATE
from mltrain.errors import CheckpointError
from mltrain.fsutil import file_sha256
from mltrain.rundir import CHECKPOINTS_DIR
from mltrain.train.distributed import any_rank

HASH = "xxh3_128"
# One process without a process group is a supported DCP mode, not a mistake worth a warning.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")

Warn = Callable[[str], None]


def file_xxh3(path: Path, chunk_bytes: int = 1 << 23) -> str:
    """Streaming xxh3-128 of a file: a checksum against bit rot and torn copies, not a signature."""
    import xxhash

    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def _owner(rel: str, world_size: int) -> int:
    """The rank that wrote `rel` (DCP names its files `__<rank>_<n>.distcp`; ours `rank_<rank>.pt`), so
    it hashes its own fresh bytes from its page cache; anything else is rank 0's."""
    m = re.match(r"^(?:__(\d+)_|rank_(\d+)\.pt$)", rel)
    r = int(m.group(1) or m.group(2)) if m else 0
    return r if r < world_size else 0


def _ckpt_files(ckpt: Path) -> list[str]:
    return sorted(str(p.relative_to(ckpt)) for p in ckpt.rglob("*") if p.is_file() and p.name != MARKER)


def hash_files(ckpt: Path, rels: list[str]) -> dict[str, dict[str, Any]]:
    out = {}
    for rel in rels:
        p = ckpt / rel
        out[rel] = {"size": p.stat().st_size, HASH: file_xxh3(p)}
    return out


def _verify_entry(ckpt: Path, rel: str, entry: dict[str, Any], deep: bool) -> str | None:
    p = ckpt / rel
    if not p.is_file():
        return f"missing file {rel}"
    if p.stat().st_size != entry["size"]:
        return f"file {rel} has {p.stat().st_size} bytes, marker says {entry['size']}"
    if deep and HASH in entry and file_xxh3(p) != entry[HASH]:
        return f"file {rel} does not match its {HASH} checksum"
    if deep and "sha256" in entry and file_sha256(p) != entry["sha256"]:  # markers written before xxh3
        return f"file {rel} does not match its sha256"
    return None


def one_line(e: BaseException) -> str:
    """An error as one line: its type and the last line of its text (DCP gathers every rank's traceback)."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[-1] if text else ''}".strip()


def _describe_failure(e: BaseException, where: Path) -> str:
    """One line for a failed save; says 'disk full' when that is why, which torch's own errors hide
    (a full disk surfaces as "unexpected pos 704 vs 598" from its zip writer)."""
    msg = one_line(e)
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


# which step dirs there are and whether their marker is there and readable: the rule every reader shares
_read_marker = checkpoint_rule.read_marker
_step_dirs = checkpoint_rule.step_dirs


def check_checkpoint(ckpt: Path, deep: bool = True, share: tuple[int, int] = (0, 1)) -> str | None:
    """None when `ckpt` is a complete committed checkpoint, else the reason it is not.

    deep: also compare every file's checksum. share=(i, n): hash only every n-th file from the i-th
    (ranks split the reading of a large checkpoint; sizes are always checked for all)."""
    files, problem = _read_marker(ckpt)
    if files is None:
        return problem
    for k, (rel, entry) in enumerate(sorted(files.items())):
        problem = _verify_entry(ckpt, rel, entry, deep and k % share[1] == share[0])
        if problem:
            return problem
    return None


def find_checkpoints(run_dir: Path, warn: Warn | None = None, deep: bool = True) -> list[tuple[int, Path]]:
    """Valid committed checkpoints of a run as (step, path), oldest first; invalid ones are warned about."""
    found = []
    for step, p in _step_dirs(run_dir):
        problem = check_checkpoint(p, deep=deep)
        if problem:
            if warn:
                warn(f"skipping checkpoint {p}: {problem}")
            continue
        found.append((step, p))
    return found


def pick_checkpoint(run_dir: Path, warn: Warn, step: int | None = None) -> tuple[int, Path] | None:
    """The newest checkpoint (or the one of `step`) that passes every check, verifying newest first and
    stopping at the first good one; one `warn` line for each newer checkpoint skipped, with the reason."""
    for s, p in reversed(_step_dirs(run_dir)):
        if step is not None and s != step:
            continue
        problem = check_checkpoint(p, deep=True)
        if problem is None:
            return s, p
        warn(f"skipping checkpoint {p.name}: {problem}")
    return None


def require_checkpoint(run_dir: Path, warn: Warn, step: int | None = None) -> tuple[int, Path]:
    """`pick_checkpoint`, or a CheckpointError that says which steps there are (export, eval, sample)."""
    picked = pick_checkpoint(run_dir, warn, step)
    if picked is not None:
        return picked
    if step is None:
        raise CheckpointError(f"{run_dir}/checkpoints: no committed checkpoint (train the run first)")
    have = [str(s) for s, _ in find_checkpoints(run_dir, deep=False)]
    raise CheckpointError(
        f"{run_dir}/checkpoints: no committed checkpoint for step {step}; have {', '.join(have) or 'none'}"
    )


def read_trainer_state(ckpt: Path) -> dict[str, Any]:
    try:
        return json.loads((ckpt / TRAINER_STATE).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{ckpt / TRAINER_STATE}: unreadable: {e}") from None


def _checkpoint_tensor_shapes(ckpt: Path, prefix: str, reader: Any = None) -> dict[str, tuple[int, ...]]:
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    meta = (reader or FileSystemReader(str(ckpt))).read_metadata()
    out = {}
    for key, md in meta.state_dict_metadata.items():
        if key.startswith(prefix) and isinstance(md, TensorStorageMetadata):
            out[key[len(prefix) :]] = tuple(md.size)
    return out


def check_model_fits(ckpt: Path, expected: dict[str, tuple[int, ...]], reader: Any = None) -> None:
    """Raise CheckpointError listing keys/shapes where `ckpt`'s model differs from `expected` (`reader`: a DCP
    storage reader for a checkpoint not on the file system)."""
    have = _checkpoint_tensor_shapes(ckpt, "model.", reader)
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


def resume_grad_accum(
    trainer_state: dict[str, Any], ckpt: Path, world_size: int, micro_batch_size: int, grad_accum_steps: int
) -> int:
    """grad_accum_steps for resuming `ckpt` on `world_size` ranks.

    The same world size and micro batch keep the configured value. Another layout keeps the global
    batch the checkpoint was trained with (world x micro x accum sequences per optimizer step), so the
    learning-rate schedule and the sample order go on as before; a layout that cannot is refused
    with the rank counts and micro batch sizes that can."""
    loader = trainer_state.get("loader") or {}
    old_world = int(trainer_state.get("world_size") or loader.get("world_size") or world_size)
    old_micro = int(trainer_state.get("micro_batch_size") or loader.get("micro_batch_size") or micro_batch_size)
    old_accum = int(trainer_state.get("grad_accum_steps") or grad_accum_steps)
    if (old_world, old_micro) == (world_size, micro_batch_size):
        return grad_accum_steps
    global_batch = old_world * old_micro * old_accum
    if global_batch % (world_size * micro_batch_size) == 0:
        return global_batch // (world_size * micro_batch_size)
    ranks = [n for n in range(1, global_batch // micro_batch_size + 1) if global_batch % (n * micro_batch_size) == 0]
    micros = [m for m in range(1, global_batch // world_size + 1) if global_batch % (world_size * m) == 0]
    raise CheckpointError(
        f"{ckpt.name} was trained with a global batch of {global_batch} sequences ({old_world} ranks x micro batch "
        f"{old_micro} x grad_accum {old_accum}), which {world_size} ranks x micro batch {micro_batch_size} cannot "
        f"keep; rank counts that can with micro batch {micro_batch_size}: {', '.join(map(str, ranks)) or 'none'}; "
        f"micro batch sizes that can on {world_size} ranks: {', '.join(map(str, micros)) or 'none'}"
    )


def load_model_state_dict(ckpt: Path, model: torch.nn.Module, make_reader: Callable[[], Any] | None = None) -> None:
    """Load only the model weights of a checkpoint into a plain (unsharded) module, one process.

    Used by export, eval and sample; DCP reshards from however many ranks wrote it. `make_reader`: a new DCP
    storage reader per read, for a checkpoint not on the file system (checkpoint.storage on S3).
    """
    import torch.distributed.checkpoint as dcp

    sd = model.state_dict()
    check_model_fits(ckpt, {k: tuple(v.shape) for k, v in sd.items()}, reader=make_reader() if make_reader else None)
    state = {"model": sd}
    if make_reader is None:
        dcp.load(state, checkpoint_id=str(ckpt))
    else:
        dcp.load(state, storage_reader=make_reader())
    model.load_state_dict(state["model"])


class CheckpointBackend(Protocol):
    """Where a checkpoint's bytes go: what CheckpointManager's save/commit protocol leaves to the storage.

    `attempt` names one write of a step (`tmp`: what is being written; `final`: the committed step, with a
    `name`); every other method gets those back. Rank 0 alone prepares, drops, publishes and prunes."""

    hashes_on_commit: bool  # the files are hashed after the write (the marker records how long that took)
    commit_errors: tuple[type[BaseException], ...]  # what a failed commit raises (anything else propagates)
    in_background: str  # the background-save line's "writing... in background" words

    def attempt(self, step: int) -> tuple[Any, Any]: ...
    def prepare(self, tmp: Any, final: Any) -> str | None: ...  # why the step cannot be written, or None
    def write_rank_state(self, tmp: Any, rank: int, rank_state: dict[str, Any]) -> None: ...
    def dcp_target(self, tmp: Any) -> dict[str, Any]: ...  # the keyword that tells DCP where to write
    def describe(self, e: BaseException) -> str: ...  # one line for a failed write
    def describe_commit(self, e: BaseException) -> str: ...  # one line for a failed commit
    def drop(self, tmp: Any) -> None: ...
    def rank_hashes(self, tmp: Any, rank: int, world_size: int) -> dict[str, Any] | str: ...  # or why not
    def add_trainer_state(self, tmp: Any, trainer_state: dict[str, Any], entries: dict[str, Any]) -> None: ...
    def publish(self, tmp: Any, final: Any, marker: dict[str, Any]) -> None: ...  # marker last
    def prune(self, keep_last: int, newest: Any) -> None: ...
    def saved_to(self, final: Any) -> str: ...  # the saved line's words for where the step went


class CheckpointManager:
    """Owns saving, committing, pruning and resuming the run's checkpoints (all ranks call it).

    The save/commit protocol is here once; where the bytes go is its `backend` (`<run>/checkpoints/`
    here, S3 in S3CheckpointManager)."""

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
        self._pending: tuple[Future, Any, Any, dict[str, Any]] | None = None  # (future, tmp, final, trainer_state)
        self.on_commit: Callable[[Path], None] | None = None  # rank 0, after each commit (checkpoint mirror)
        from mltrain.train.local_checkpoint import LocalBackend

        self.backend: CheckpointBackend = LocalBackend(self.root, lambda m: self.warn(m))
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
        backend = self.backend
        tmp, final = backend.attempt(step)
        why = backend.prepare(tmp, final) if self.rank == 0 else None
        if not self._agree_or_abandon(why is None, tmp, f"checkpoint at step {step}", why or "", drop=False):
            return False
        ok = True
        err = ""
        t0 = time.perf_counter()
        try:
            backend.write_rank_state(tmp, self.rank, rank_state)
            if self.async_save:
                fut = dcp.async_save(app_state, **backend.dcp_target(tmp), process_group=self._ckpt_pg)
            else:
                dcp.save(app_state, **backend.dcp_target(tmp))
        except (Exception, CheckpointException) as e:  # DCP's gathered error is a BaseException
            ok, err = False, backend.describe(e)
        if not self._agree_or_abandon(ok, tmp, f"checkpoint at step {step}", err):
            return False
        if self.async_save:
            self._pending = (fut, tmp, final, trainer_state)
            self.info(f"checkpoint step {step}: staged in {time.perf_counter() - t0:.2f}s, {backend.in_background}")
            return True
        ok = self._commit(tmp, final, trainer_state)
        if ok:
            self.info(f"checkpoint step {step} saved{backend.saved_to(final)} in {time.perf_counter() - t0:.2f}s")
        return ok

    def poll(self) -> None:
        """Commit a finished background save without blocking (call once per step, on every rank).

        The commit is collective, so ranks agree first: one rank's write may finish a step before
        another's, and a rank entering the commit alone would pair its collectives with the other
        ranks' training collectives."""
        if self._pending is None:
            return
        if not any_rank(not self._pending[0].done()):
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
            ok, err = False, self.backend.describe(e)
        if not self._agree_or_abandon(ok, tmp, f"background checkpoint {final.name}", err):
            return False
        return self._commit(tmp, final, trainer_state)

    def _agree_or_abandon(self, ok: bool, tmp: Any, what: str, err: str, drop: bool = True) -> bool:
        """All ranks agree whether the write succeeded; if any failed, drop what was written (`drop`)
        and keep the previous checkpoint."""
        if self._all_ok(ok):
            return True
        if self.rank == 0 and drop:
            self.backend.drop(tmp)
        self.warn(f"{what} failed ({err or 'on another rank'}); the previous checkpoint is kept")
        return False

    def _gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` on rank 0 (in rank order); [] elsewhere."""
        if not dist.is_initialized():
            return [obj]
        out: list[Any] | None = [None] * self.world_size if self.rank == 0 else None
        dist.gather_object(obj, out, dst=0)
        return out or []

    def _commit(self, tmp: Any, final: Any, trainer_state: dict[str, Any]) -> bool:
        """Every rank's {file: size, hash} to rank 0, which adds trainer_state.json, publishes the marker
        last, prunes and calls on_commit; a failure drops the attempt and keeps the previous checkpoint."""
        backend = self.backend
        self._barrier()  # every rank's files are written
        t0 = time.perf_counter()
        parts = self._gather(backend.rank_hashes(tmp, self.rank, self.world_size))
        ok = True
        if self.rank == 0:
            try:
                failed = [f"rank {r}: {p}" for r, p in enumerate(parts) if isinstance(p, str)]
                if failed:
                    raise OSError(f"checksumming failed ({'; '.join(failed)})")
                entries: dict[str, Any] = {}
                for p in parts:
                    entries.update(p)
                backend.add_trainer_state(tmp, trainer_state, entries)
                marker: dict[str, Any] = {
                    "files": dict(sorted(entries.items())),
                    "total_bytes": sum(e["size"] for e in entries.values()),
                    "hash": HASH,
                }
                if backend.hashes_on_commit:
                    marker["hash_s"] = round(time.perf_counter() - t0, 3)
                marker.update(step=trainer_state.get("step"), world_size=self.world_size, time=time.time())
                backend.publish(tmp, final, marker)
                backend.prune(self.keep_last, final)
                if self.on_commit is not None:
                    self.on_commit(final)
            except backend.commit_errors as e:
                ok = False
                backend.drop(tmp)
                self.warn(
                    f"checkpoint {final.name} could not be committed ({backend.describe_commit(e)}); "
                    "the previous checkpoint is kept"
                )
        return self._all_ok(ok)

    # ------------------------------------------------------------------ resume
    def latest(self) -> tuple[int, Path] | None:
        """The newest checkpoint whose every file matches its checksum, agreed on by every rank.

        Rank 0 lists the candidates; all ranks verify the newest together (each hashes a share of its
        files); a bad one is named with its reason (one line each) and the next older one is tried."""
        if not dist.is_initialized() or self.world_size == 1:
            return pick_checkpoint(self.root.parent, self.warn)
        listing: list[Any] = [
            [(s, str(p)) for s, p in reversed(_step_dirs(self.root.parent))] if self.rank == 0 else None
        ]
        dist.broadcast_object_list(listing, src=0)
        for step, where in listing[0]:
            path = Path(where)
            problems = [None] * self.world_size
            dist.all_gather_object(problems, check_checkpoint(path, share=(self.rank, self.world_size)))
            problem = next((p for p in problems if p), None)
            if problem is None:
                return int(step), path
            self.warn(f"skipping checkpoint {path.name}: {problem}")
        return None

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
