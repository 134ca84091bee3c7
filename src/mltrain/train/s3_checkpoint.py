"""Checkpoints written straight to S3 (`checkpoint.storage: s3://bucket/prefix`), with the rules of
checkpoints on a file system: `<storage>/step_N/` is complete once its `COMMITTED` object exists,
and that marker lists every object with its size and xxh3-128 hash.

DCP writes through s3torchconnector's storage writer (its CRT client streams each file to S3 as
a multipart upload; no local copy). Every byte is hashed as it is written, by a thin layer over its
file system, so a rank knows its files' hashes without reading anything back. Rank 0 puts
`trainer_state.json`, then the marker, last. S3 has no rename: a second attempt at a step first
deletes the old marker (the step stops being complete at once), then the old objects.

Resume takes the newest step whose marker is there and whose every object has the marker's size
and hash (each rank streams a share of the objects through xxh3); a damaged step is named with the
reason, one line, and the next older one is tried, as on a file system.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mltrain.checkpoint_rule import MARKER, TRAINER_STATE, step_dir_name
from mltrain.errors import CheckpointError
from mltrain.storage.url import S3Url, StorageError, parse_s3_url
from mltrain.train.checkpoint import (
    HASH,
    CheckpointManager,
    Warn,
    check_model_fits,
    one_line,
    read_trainer_state,
)

_READ = 8 << 20


class S3Store:
    """The few S3 calls a checkpoint needs, on one boto3 client, errors as CheckpointError lines."""

    def __init__(self, url: S3Url, client: Any = None) -> None:
        from mltrain.storage.client import make_client

        self.url = url
        self.client = client or make_client()

    def _err(self, e: BaseException, where: str) -> CheckpointError:
        from mltrain.storage.client import describe

        return CheckpointError(describe(e, where))

    def get(self, key: str) -> bytes | None:
        from mltrain.storage.client import unless_missing

        try:
            return unless_missing(
                lambda: self.client.get_object(Bucket=self.url.bucket, Key=key)["Body"].read(),
                f"s3://{self.url.bucket}/{key}",
            )
        except StorageError as e:
            raise CheckpointError(str(e)) from None

    def put(self, key: str, data: bytes) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.put_object(Bucket=self.url.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as e:
            raise self._err(e, f"s3://{self.url.bucket}/{key}") from None

    def hash_object(self, key: str) -> str:
        """xxh3-128 of an object's bytes, streamed (never held whole in memory)."""
        import xxhash
        from botocore.exceptions import BotoCoreError, ClientError

        h = xxhash.xxh3_128()
        try:
            body = self.client.get_object(Bucket=self.url.bucket, Key=key)["Body"]
            for chunk in body.iter_chunks(_READ):
                h.update(chunk)
        except (BotoCoreError, ClientError) as e:
            raise self._err(e, f"s3://{self.url.bucket}/{key}") from None
        return h.hexdigest()

    def sizes(self, prefix: S3Url) -> dict[str, int]:
        from mltrain.storage.transfer import list_objects

        try:
            return list_objects(self.client, prefix)
        except StorageError as e:
            raise CheckpointError(str(e)) from None

    def steps(self) -> list[tuple[int, str, bool]]:
        """(step, name, has its marker) of every step_N/ under the storage URL, oldest first."""
        from mltrain.train.mirror import remote_checkpoints

        try:
            return remote_checkpoints(self.client, self.url)
        except StorageError as e:
            raise CheckpointError(str(e)) from None

    def remove_step(self, name: str) -> None:
        """Marker first (the step stops being complete at once), then every other object of the step."""
        from mltrain.train.mirror import delete_remote_checkpoint

        try:
            delete_remote_checkpoint(self.client, self.url, name)
        except StorageError as e:
            raise CheckpointError(str(e)) from None
        except Exception as e:  # botocore errors
            raise self._err(e, str(self.url.child(name))) from None


class S3CheckpointPath:
    """A checkpoint on S3 (or one object of it) with the Path members the trainer uses on a checkpoint:
    `name`, `/`, `read_text`, `exists`; str() is its s3:// URL."""

    def __init__(self, store: S3Store, rel: str) -> None:
        self.store = store
        self.rel = rel.strip("/")

    @property
    def name(self) -> str:
        return self.rel.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        return self.store.url.key(self.rel)

    def __truediv__(self, other: str) -> S3CheckpointPath:
        return S3CheckpointPath(self.store, f"{self.rel}/{other}")

    def __str__(self) -> str:
        return f"s3://{self.store.url.bucket}/{self.key}"

    def read_bytes(self) -> bytes:
        data = self.store.get(self.key)
        if data is None:
            raise FileNotFoundError(str(self))
        return data

    def read_text(self) -> str:
        try:
            return self.read_bytes().decode()
        except CheckpointError as e:
            raise OSError(str(e)) from None

    def exists(self) -> bool:
        return self.store.get(self.key) is not None


def _xxh3(data: bytes) -> str:
    import xxhash

    return xxhash.xxh3_128(data).hexdigest()


class _HashingStream:
    """A write stream that hashes every byte on its way to S3: the marker's hash with no read back."""

    def __init__(self, inner: Any) -> None:
        import xxhash

        self._inner = inner
        self._h = xxhash.xxh3_128()
        self.size = 0

    def write(self, data: Any) -> int:
        n = self._inner.write(data)
        self._h.update(data)
        self.size += memoryview(data).nbytes
        return n

    def hexdigest(self) -> str:
        return self._h.hexdigest()

    def __getattr__(self, name: str) -> Any:  # tell, flush, writable, ...
        return getattr(self._inner, name)


def _file_system(region: str, endpoint: str | None, record: dict[str, dict[str, Any]]) -> Any:
    """s3torchconnector's DCP file system on our endpoint, recording {file: {size, hash}} of each write."""
    from s3torchconnector import S3ClientConfig
    from s3torchconnector._s3client import S3Client
    from s3torchconnector.dcp.s3_file_system import S3FileSystem

    config = S3ClientConfig(force_path_style=endpoint is not None)

    class HashingS3FileSystem(S3FileSystem):
        @contextmanager
        def create_stream(self, path: Any, mode: str) -> Iterator[Any]:
            with super().create_stream(path, mode) as stream:
                if mode != "wb":
                    yield stream
                    return
                hashed = _HashingStream(stream)
                yield hashed
            record[str(path).rsplit("/", 1)[-1]] = {"size": hashed.size, HASH: hashed.hexdigest()}

        def rename(self, path: Any, new_path: Any) -> None:
            super().rename(path, new_path)
            old, new = str(path).rsplit("/", 1)[-1], str(new_path).rsplit("/", 1)[-1]
            if old in record:
                record[new] = record.pop(old)

    client = S3Client(region, endpoint=endpoint, s3client_config=config) if endpoint else None
    return HashingS3FileSystem(region, s3_client=client, s3client_config=config)


@dataclass
class _Attempt:
    """One write of a step on S3: its dir name, and each file's {size, hash} recorded while it streamed."""

    name: str
    record: dict[str, dict[str, Any]] = field(default_factory=dict)


class S3Backend:
    """Checkpoints under an s3:// URL: the storage side of CheckpointManager's save/commit protocol.

    No rename: an earlier attempt at the step is removed (marker first) before the write, and every object
    is written in place. The hashes are those recorded while streaming, nothing is read back."""

    hashes_on_commit = False
    commit_errors: tuple[type[BaseException], ...] = (CheckpointError,)
    in_background = "writing to S3 in background"

    def __init__(self, store: S3Store, region: str, endpoint: str | None, run_dir: Path, warn: Warn) -> None:
        self.store = store
        self.region = region
        self.endpoint = endpoint
        self.run_dir = run_dir
        self.warn = warn

    def attempt(self, step: int) -> tuple[_Attempt, S3CheckpointPath]:
        name = step_dir_name(step)
        return _Attempt(name), S3CheckpointPath(self.store, name)

    def prepare(self, tmp: _Attempt, final: S3CheckpointPath) -> str | None:
        """A step dir of an earlier attempt at this step stops being complete before we write."""
        try:
            if any(n == tmp.name for _, n, _ in self.store.steps()):
                self.store.remove_step(tmp.name)
                self.warn(f"replaced {final} (written by an earlier attempt at this step) with this save")
        except CheckpointError as e:
            return str(e)
        return None

    def write_rank_state(self, tmp: _Attempt, rank: int, rank_state: dict[str, Any]) -> None:
        buf = io.BytesIO()
        torch.save(rank_state, buf)
        rank_file = f"rank_{rank:05d}.pt"
        self.store.put(self.store.url.key(tmp.name) + f"/{rank_file}", buf.getvalue())
        tmp.record[rank_file] = {"size": buf.getbuffer().nbytes, HASH: _xxh3(buf.getvalue())}

    def dcp_target(self, tmp: _Attempt) -> dict[str, Any]:
        from s3torchconnector.dcp import S3StorageWriter

        writer = S3StorageWriter(self.region, str(S3CheckpointPath(self.store, tmp.name)))
        writer.fs = _file_system(self.region, self.endpoint, tmp.record)
        return {"storage_writer": writer}

    def describe(self, e: BaseException) -> str:
        return one_line(e)

    def describe_commit(self, e: BaseException) -> str:
        return str(e)

    def drop(self, tmp: _Attempt) -> None:
        try:
            self.store.remove_step(tmp.name)
        except CheckpointError:
            pass  # no marker was written: the step is not complete either way

    def rank_hashes(self, tmp: _Attempt, rank: int, world_size: int) -> dict[str, Any]:
        return dict(tmp.record)

    def add_trainer_state(self, tmp: _Attempt, trainer_state: dict[str, Any], entries: dict[str, Any]) -> None:
        state = json.dumps(trainer_state, indent=1).encode()
        self.store.put(f"{self.store.url.key(tmp.name)}/{TRAINER_STATE}", state)
        entries[TRAINER_STATE] = {"size": len(state), HASH: _xxh3(state)}

    def publish(self, tmp: _Attempt, final: S3CheckpointPath, marker: dict[str, Any]) -> None:
        self.store.put(f"{final.key}/{MARKER}", json.dumps(marker).encode())
        record_remote_commit(self.run_dir, marker["step"], str(final))

    def prune(self, keep_last: int, newest: S3CheckpointPath) -> None:
        steps = self.store.steps()
        committed = [n for _, n, complete in steps if complete]
        drop = committed[: max(0, len(committed) - keep_last)]
        drop += [n for _, n, complete in steps if not complete and n < newest.name]  # cut short by a killed run
        for n in drop:
            self.store.remove_step(n)

    def saved_to(self, final: S3CheckpointPath) -> str:
        return f" to {final}"


class S3CheckpointManager(CheckpointManager):
    """CheckpointManager whose checkpoints live under an s3:// URL instead of `<run>/checkpoints/`."""

    def __init__(
        self,
        url: str,
        run_dir: Path,
        keep_last: int,
        rank: int,
        world_size: int,
        async_save: bool = False,
        warn: Warn = print,
        info: Warn = print,
        client: Any = None,
    ) -> None:
        super().__init__(run_dir, keep_last, rank, world_size, async_save=async_save, warn=warn, info=info)
        try:
            import s3torchconnector.dcp  # noqa: F401
        except ImportError:
            raise CheckpointError(
                f"checkpoint.storage {url}: needs s3torchconnector (pip install 'mltrain[s3ckpt]')"
            ) from None
        from mltrain.storage.engine import _endpoint

        self.store = S3Store(parse_s3_url(url), client)
        self.region = self.store.client.meta.region_name or "us-east-1"
        self.endpoint = _endpoint(self.store.client)
        self.backend = S3Backend(self.store, self.region, self.endpoint, self.root.parent, lambda m: self.warn(m))

    # ------------------------------------------------------------------ helpers
    def step(self, name: str) -> S3CheckpointPath:
        return S3CheckpointPath(self.store, name)

    def storage_reader(self, ckpt: S3CheckpointPath) -> Any:
        from s3torchconnector.dcp import S3StorageReader

        reader = S3StorageReader(self.region, str(ckpt))
        reader.fs = _file_system(self.region, self.endpoint, {})
        return reader

    # ------------------------------------------------------------------ resume
    def check(self, name: str, deep: bool = True, share: tuple[int, int] = (0, 1)) -> str | None:
        """None when step `name` is complete and every object matches the marker, else why not."""
        raw = self.store.get(self.step(name).key + f"/{MARKER}")
        if raw is None:
            return "no COMMITTED marker (the save did not finish)"
        try:
            files = json.loads(raw)["files"]
            if not isinstance(files, dict):
                raise ValueError("'files' is not a mapping")
        except (ValueError, KeyError, TypeError) as e:
            return f"unreadable COMMITTED marker ({e})"
        have = self.store.sizes(self.store.url.child(name))
        for k, (rel, entry) in enumerate(sorted(files.items())):
            if rel not in have:
                return f"missing file {rel}"
            if have[rel] != entry["size"]:
                return f"file {rel} has {have[rel]} bytes, marker says {entry['size']}"
            if (
                deep
                and k % share[1] == share[0]
                and self.store.hash_object(self.step(name).key + f"/{rel}") != entry[HASH]
            ):
                return f"file {rel} does not match its {HASH} checksum"
        return None

    def latest(self) -> tuple[int, S3CheckpointPath] | None:  # type: ignore[override]
        """The newest step on S3 whose every object matches its marker, agreed on by every rank."""
        multi = dist.is_initialized() and self.world_size > 1
        listing: list[Any] = [[(s, n) for s, n, _ in reversed(self.store.steps())] if self.rank == 0 else None]
        if multi:
            dist.broadcast_object_list(listing, src=0)
        for step, name in listing[0]:
            if multi:
                problems: list[Any] = [None] * self.world_size
                dist.all_gather_object(problems, self.check(name, share=(self.rank, self.world_size)))
                problem = next((p for p in problems if p), None)
            else:
                problem = self.check(name)
            if problem is None:
                return int(step), self.step(name)
            self.warn(f"skipping checkpoint {self.step(name)}: {problem}")
        return None

    def load(  # type: ignore[override]
        self, ckpt: S3CheckpointPath, app_state: dict[str, Any], expected_model_shapes: dict[str, tuple[int, ...]]
    ) -> dict[str, Any]:
        import torch.distributed.checkpoint as dcp

        check_model_fits(ckpt, expected_model_shapes, reader=self.storage_reader(ckpt))  # type: ignore[arg-type]
        dcp.load(app_state, storage_reader=self.storage_reader(ckpt))
        state = read_trainer_state(ckpt)  # type: ignore[arg-type]
        rank_obj = ckpt / f"rank_{self.rank:05d}.pt"
        data = self.store.get(rank_obj.key)
        state["_rank_state"] = torch.load(io.BytesIO(data), weights_only=False) if data is not None else {}
        return state


def record_remote_commit(run_dir: Path, step: Any, url: str) -> None:
    """The run dir's record of the newest step committed on S3 (checkpoint_rule.REMOTE_COMMIT); a record
    that cannot be written costs the launcher's progress check, never the checkpoint."""
    from mltrain.checkpoint_rule import REMOTE_COMMIT
    from mltrain.fsutil import atomic_write

    try:
        atomic_write(Path(run_dir) / REMOTE_COMMIT, json.dumps({"step": step, "url": url, "time": time.time()}) + "\n")
    except OSError:
        pass
