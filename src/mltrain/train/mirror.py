"""Checkpoint mirror: every committed checkpoint goes to S3 in the background, and a run that starts
with no local checkpoint (a new cluster) pulls the newest complete one back first.

A remote checkpoint `<mirror>/step_N/` is complete once its `COMMITTED` object exists: it is
uploaded last, after every other file and the transfer manifest, so a killed upload never looks
complete. The upload reads hard links of the committed files (taken synchronously, in
milliseconds) so local pruning cannot pull files out from under it, and runs on rank 0 in a
background thread: training never waits for it, and the process does not exit before the last
checkpoint is off the cluster. `keep_last` is applied to the remote copies too.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mltrain import rundir
from mltrain.errors import CheckpointError
from mltrain.storage.url import S3Url, StorageError, parse_s3_url

MARKER = rundir.CHECKPOINT_MARKER
STAGING_DIR = ".mirror-staging"
RESTORE_SUFFIX = ".restore"  # checkpoints/step_N.restore: a download not yet checked
_STEP_RE = rundir.STEP_DIR_RE

Log = Callable[[str], None]


def remote_checkpoints(client: Any, url: S3Url) -> list[tuple[int, str, bool]]:
    """(step, dir name, complete) of every step_N/ under `url`, oldest first."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mltrain.storage.client import storage_error

    names = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(
            Bucket=url.bucket, Prefix=url.list_prefix, Delimiter="/"
        ):
            for cp in page.get("CommonPrefixes", []):
                name = url.rel(cp["Prefix"]).strip("/")
                if _STEP_RE.match(name):
                    names.append(name)
        out = []
        for name in sorted(names):
            resp = client.list_objects_v2(Bucket=url.bucket, Prefix=url.key(f"{name}/{MARKER}"), MaxKeys=1)
            out.append((int(name[5:]), name, resp.get("KeyCount", 0) > 0))
        return out
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(url)) from None


def delete_remote_checkpoint(client: Any, url: S3Url, name: str) -> None:
    """Marker first (the checkpoint stops being complete at once), then everything else."""
    from mltrain.storage.transfer import _delete_objects, abort_stale_uploads, list_objects

    step = url.child(name)
    client.delete_object(Bucket=url.bucket, Key=step.key(MARKER))
    rels = list(list_objects(client, step)) + [".mltrain-manifest.json"]
    _delete_objects(client, step, rels)
    abort_stale_uploads(client, step)


def _wait_before_exit(fn: Callable[[], None]) -> None:
    """Run `fn` when the main thread finishes, before the interpreter starts shutting down thread pools.

    A plain non-daemon thread is not enough: once the main thread is done, concurrent.futures refuses
    new work ("cannot schedule new futures after interpreter shutdown"), and boto3's transfers use it.
    threading's own pre-shutdown hook runs in reverse order of registration, so this runs first.
    """
    register = getattr(threading, "_register_atexit", None)
    if register is not None:
        register(fn)
    else:  # pragma: no cover - every CPython since 3.9 has it
        import atexit

        atexit.register(fn)


_ACTIVE: list[CheckpointMirror] = []


def wait_for_uploads() -> None:
    """Block until every mirror of this process has sent what it was given. The trainer calls it
    before it returns: torchrun workers leave with os._exit, which would kill the upload thread."""
    for m in list(_ACTIVE):
        m.wait()


class CheckpointMirror:
    """Uploads committed checkpoints of one run to `url`, newest first when it falls behind."""

    def __init__(self, url: str, run_dir: Path, keep_last: int, warn: Log = print, info: Log = print) -> None:
        self.url = parse_s3_url(url)
        self.staging = Path(run_dir) / STAGING_DIR
        self.keep_last = keep_last
        self.warn = warn
        self.info = info
        self._lock = threading.Lock()
        self._pending: list[Path] = []
        self._thread: threading.Thread | None = None
        self._client: Any = None
        self.uploaded: list[int] = []

    # ------------------------------------------------------------------ called by CheckpointManager
    def committed(self, ckpt: Path) -> None:
        """Stage `ckpt` (hard links) and queue its upload; never raises into the training loop."""
        try:
            staged = self.staging / ckpt.name
            shutil.rmtree(staged, ignore_errors=True)
            for src in sorted(p for p in ckpt.rglob("*") if p.is_file()):
                dst = staged / src.relative_to(ckpt)
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(src, dst)
                except OSError:  # a file system without hard links: copy
                    shutil.copy2(src, dst)
        except OSError as e:
            self.warn(f"checkpoint mirror: cannot stage {ckpt.name} for upload ({e}); not mirrored")
            return
        with self._lock:
            self._pending.append(staged)
            if self._thread is None or not self._thread.is_alive():
                if self._thread is None:
                    _ACTIVE.append(self)
                    _wait_before_exit(self.wait)
                self._thread = threading.Thread(target=self._drain, name="checkpoint-mirror", daemon=False)
                self._thread.start()

    def wait(self) -> None:
        """Block until every queued checkpoint is uploaded."""
        told = False
        while True:
            with self._lock:
                t = self._thread
            if t is None or not t.is_alive():
                return
            if not told:
                self.info(f"checkpoint mirror: waiting for the upload to {self.url} to finish")
                told = True
            t.join()

    # ------------------------------------------------------------------ the background thread
    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._pending:
                    return
                staged, skipped = self._pending[-1], self._pending[:-1]
                self._pending = []
            for old in skipped:  # fell behind: only the newest checkpoint is worth sending
                shutil.rmtree(old, ignore_errors=True)
                self.info(f"checkpoint mirror: skipped {old.name} (a newer checkpoint is queued)")
            try:
                self._upload(staged)
            except Exception as e:  # a mirror failure must never take training down
                self.warn(f"checkpoint mirror: {staged.name} not mirrored to {self.url}: {e}")
            finally:
                shutil.rmtree(staged, ignore_errors=True)

    def _upload(self, staged: Path) -> None:
        from mltrain.storage.client import make_client
        from mltrain.storage.engine import ENGINE_ENV
        from mltrain.storage.transfer import TransferSettings, upload

        if self._client is None:  # every PUT carries a signed checksum of its body: no second hash to sign it
            self._client = make_client(sign_payload=False)
        t0 = time.perf_counter()
        dest = self.url.child(staged.name)
        # the CRT engine where it can run: it sends from native threads, outside the training process's interpreter
        settings = TransferSettings(engine=os.environ.get(ENGINE_ENV) or "crt")
        s = upload(staged, dest, self._client, settings, exclude=lambda rel: rel == MARKER, progress=False)
        self._client.put_object(
            Bucket=dest.bucket, Key=dest.key(MARKER), Body=(staged / MARKER).read_bytes(), ChecksumAlgorithm="SHA256"
        )
        self.uploaded.append(int(staged.name[5:]))
        self.info(
            f"checkpoint mirror: {staged.name} -> {dest} ({s.bytes_total / 2**20:.1f} MiB, "
            f"{time.perf_counter() - t0:.1f}s, {s.engine} engine)"
        )
        self._prune()

    def _prune(self) -> None:
        remote = remote_checkpoints(self._client, self.url)
        complete = [name for _, name, ok in remote if ok]
        doomed = complete[: max(0, len(complete) - self.keep_last)]
        if complete:  # incomplete copies older than the newest complete one are leftovers of killed uploads
            newest = complete[-1]
            doomed += [name for _, name, ok in remote if not ok and name < newest]
        for name in sorted(doomed):
            delete_remote_checkpoint(self._client, self.url, name)


# --------------------------------------------------------------------------- restore


def restore_latest(url: str, run_dir: Path, warn: Log = print, info: Log = print) -> int | None:
    """Pull the newest complete remote checkpoint into `<run>/checkpoints/step_N` (rank 0, when the run
    has no local checkpoint). Returns its step, or None when the mirror holds none. Every file is
    checked against the transfer manifest and the COMMITTED marker before the directory appears."""
    from mltrain.rundir import CHECKPOINTS_DIR
    from mltrain.storage.client import make_client
    from mltrain.storage.transfer import download
    from mltrain.train.checkpoint import check_checkpoint

    s3url = parse_s3_url(url)
    client = make_client()
    remote = [(step, name) for step, name, ok in remote_checkpoints(client, s3url) if ok]
    if not remote:
        info(f"checkpoint mirror: no complete checkpoint under {s3url}; starting fresh")
        return None
    step, name = remote[-1]
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / name
    tmp = root / f"{name}{RESTORE_SUFFIX}"
    for stale in root.glob(f"step_*{RESTORE_SUFFIX}"):  # restores a killed start left, of any step
        shutil.rmtree(stale, ignore_errors=True)
    t0 = time.perf_counter()
    try:
        # the marker is uploaded after the transfer manifest, so the manifest does not list it: it is
        # checked against S3's checksum here, and lists (and checks) every other file below
        s = download(s3url.child(name), tmp, client, progress=False, unlisted={MARKER})
        problem = check_checkpoint(tmp, deep=True)
        if problem:
            raise CheckpointError(f"checkpoint mirror: {s3url.child(name)} is not usable: {problem}")
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info(
        f"checkpoint mirror: restored {name} from {s3url} ({s.bytes_total / 2**20:.1f} MiB, "
        f"{time.perf_counter() - t0:.1f}s)"
    )
    return step


def attach_checkpoint_mirror(ckpt_manager: Any, ckpt_cfg: Any) -> None:
    """Called once by the trainer after building its CheckpointManager, before it looks for a checkpoint:
    restores from the mirror when this run has no local checkpoint, then mirrors every new commit.
    All ranks call it; only rank 0 talks to S3 and the others wait for its verdict."""
    mirror_url, warn, info = ckpt_cfg.mirror, ckpt_manager.warn, ckpt_manager.info
    if not mirror_url:
        return
    import torch.distributed as dist

    from mltrain.train.checkpoint import find_checkpoints

    run_dir = ckpt_manager.root.parent
    verdict: list[Any] = [None]
    if ckpt_manager.rank == 0:
        try:  # a bad URL must reach the other ranks as the verdict too, not leave them waiting for it
            mirror = CheckpointMirror(mirror_url, run_dir, ckpt_manager.keep_last, warn, info)
            if ckpt_cfg.resume and not find_checkpoints(run_dir, deep=False):
                restore_latest(mirror_url, run_dir, warn, info)
            ckpt_manager.on_commit = mirror.committed
        except (StorageError, CheckpointError) as e:
            verdict = [f"checkpoint.mirror: cannot restore from {mirror_url}: {e}"]
    if dist.is_initialized():
        dist.broadcast_object_list(verdict, src=0)
    if verdict[0] is not None:
        # a mirror we cannot read must not silently become "start from step 0" (and then prune it)
        raise CheckpointError(verdict[0])
