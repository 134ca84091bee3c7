"""Upload, download and sync between a local tree and an S3 prefix: parallel multipart through
s3transfer, S3 additional checksums, skip-what-is-already-there, and a manifest written last.

Resumability is per file: a rerun hashes the local files, asks S3 which objects already hold the
same bytes (size + stored checksum) and sends only the rest. Multipart uploads left behind by a
killed run (SIGKILL gives s3transfer no chance to abort them) are aborted before anything is sent,
so none is ever orphaned. Downloads land in a temp file beside the target, are hashed, and are
renamed only when they match: nothing half-written is left at a real path.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mltrain.storage.client import S3Options, check_bucket, is_not_found, make_client, storage_error
from mltrain.storage.digest import (
    CRC64NVME,
    SHA256,
    FileDigest,
    choose_algorithm,
    digest_file,
    part_size_for,
    same_checksum,
    stored_checksum,
)
from mltrain.storage.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from mltrain.storage.progress import ByteProgress, byte_progress
from mltrain.storage.url import S3Url, StorageError, is_s3, parse_s3_url

TMP_SUFFIX = ".mltrain-tmp"
MiB = 1 << 20


@dataclass(frozen=True)
class TransferSettings:
    """Tuning knobs (s3transfer's TransferConfig) and the checksum algorithm."""

    concurrency: int = 16
    part_size: int = 16 * MiB
    threshold: int = 16 * MiB
    checksum: str = "auto"
    hash_workers: int = 4

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
            max_io_queue=1000,
            io_chunksize=256 * 1024,
            use_threads=True,
        )


@dataclass
class TransferSummary:
    """What happened, for the CLI's last line and `--json`."""

    direction: str
    source: str
    dest: str
    files: int = 0
    transferred: int = 0
    skipped: int = 0
    bytes_total: int = 0
    bytes_transferred: int = 0
    deleted: list[str] = field(default_factory=list)
    aborted_multipart_uploads: int = 0
    checksum_algorithm: str = ""
    verified: bool = False
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["mib_per_s"] = round(self.bytes_transferred / MiB / self.seconds, 2) if self.seconds else None
        return d


# --------------------------------------------------------------------------- listing


def local_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for a file or a directory tree (temp files and manifests excluded)."""
    if root.is_file():
        return {root.name: root}
    if not root.is_dir():
        raise StorageError(f"{root}: no such file or directory")
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not p.name.endswith(TMP_SUFFIX) and p.name != MANIFEST_NAME:
            out[p.relative_to(root).as_posix()] = p
    return out


def list_objects(client: Any, url: S3Url) -> dict[str, int]:
    """Relative path -> size of every object under `url` (the manifest excluded)."""
    from botocore.exceptions import BotoCoreError, ClientError

    out: dict[str, int] = {}
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=url.list_prefix):
            for obj in page.get("Contents", []):
                rel = url.rel(obj["Key"])
                if rel and rel != MANIFEST_NAME:
                    out[rel] = int(obj["Size"])
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(url)) from None
    return out


def head(client: Any, bucket: str, key: str) -> dict | None:
    """HeadObject with the stored additional checksum; None when the object does not exist."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED")
    except ClientError as e:
        if is_not_found(e):
            return None
        raise storage_error(e, f"s3://{bucket}/{key}") from None
    except BotoCoreError as e:
        raise storage_error(e, f"s3://{bucket}/{key}") from None


def abort_stale_uploads(client: Any, url: S3Url, keys: set[str] | None = None) -> int:
    """Abort unfinished multipart uploads under `url` (only for `keys` when given); returns how many."""
    n = 0
    for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=url.bucket, Prefix=url.list_prefix):
        for up in page.get("Uploads", []):
            if keys is None or up["Key"] in keys:
                client.abort_multipart_upload(Bucket=url.bucket, Key=up["Key"], UploadId=up["UploadId"])
                n += 1
    return n


def _refuse_delete(victims: list[str], where: str) -> StorageError:
    shown = ", ".join(victims[:20]) + (f", ... ({len(victims) - 20} more)" if len(victims) > 20 else "")
    return StorageError(
        f"--delete would delete {len(victims)} file(s) from {where} that the source does not have: {shown}; "
        "rerun with --yes to delete them (nothing was transferred or deleted)"
    )


def _parallel(fn: Callable[[Any], Any], items: list[Any], workers: int) -> Iterator[Any]:
    if not items:
        return iter(())
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(items)))) as pool:
        return iter(list(pool.map(fn, items)))


# --------------------------------------------------------------------------- upload


def upload(
    local: Path,
    dest: S3Url,
    client: Any,
    settings: TransferSettings = TransferSettings(),
    *,
    delete: bool = False,
    yes: bool = False,
    console: Console | None = None,
    progress: bool = True,
    exclude: Callable[[str], bool] | None = None,
) -> TransferSummary:
    """Make `dest` hold the files of `local` (a file or a tree); returns what was done."""
    from botocore.exceptions import BotoCoreError, ClientError
    from s3transfer.manager import TransferManager

    t0 = time.perf_counter()
    local = Path(local)
    if delete and local.is_file():
        raise StorageError(f"{local}: --delete needs a directory as the source, not one file")
    files = local_files(local)
    if exclude:
        files = {rel: p for rel, p in files.items() if not exclude(rel)}
    algo = choose_algorithm(settings.checksum)
    summary = TransferSummary("upload", str(local), str(dest), files=len(files), checksum_algorithm=algo)
    check_bucket(client, dest.bucket)
    remote = list_objects(client, dest)
    victims = sorted(set(remote) - set(files)) if delete else []
    if victims and not yes:
        raise _refuse_delete(victims, str(dest))
    try:
        summary.aborted_multipart_uploads = abort_stale_uploads(client, dest, {dest.key(r) for r in files})
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(dest)) from None

    def digest(rel: str) -> tuple[str, FileDigest]:
        p = files[rel]
        try:
            size = p.stat().st_size
            return rel, digest_file(p, part_size_for(size, settings.threshold, settings.part_size), algo)
        except OSError as e:
            raise StorageError(f"{p}: cannot read: {e.strerror or e}") from None

    def unchanged(item: tuple[str, FileDigest]) -> bool:  # S3 already holds these bytes
        rel, d = item
        if remote.get(rel) != d.size:
            return False
        h = head(client, dest.bucket, dest.key(rel))
        return h is not None and same_checksum(stored_checksum(h), d.s3_checksum)

    def prepare(rel: str) -> tuple[str, FileDigest, bool]:
        item = digest(rel)
        return rel, item[1], unchanged(item)

    digests: dict[str, FileDigest] = {}
    todo: list[str] = []
    with byte_progress(f"upload -> {dest}", console, progress) as bar:
        try:
            # pipelined: a file is sent as soon as it is hashed and S3 turned out not to have those bytes
            with (
                ThreadPoolExecutor(max_workers=settings.hash_workers) as hashers,
                TransferManager(client, settings.transfer_config()) as tm,
            ):
                futures = []
                for rel, d, same in hashers.map(prepare, sorted(files)):
                    digests[rel] = d
                    summary.bytes_total += d.size
                    bar.add_total(d.size)
                    if same:
                        summary.skipped += 1
                        bar.advance(d.size)
                        continue
                    todo.append(rel)
                    futures.append(
                        tm.upload(
                            str(files[rel]),
                            dest.bucket,
                            dest.key(rel),
                            extra_args=_checksum_args(algo, d),
                            subscribers=[bar.subscriber()],
                        )
                    )
                for fut in futures:
                    fut.result()
        except (BotoCoreError, ClientError) as e:
            raise storage_error(e, str(dest)) from None
        except OSError as e:
            raise StorageError(f"{local}: cannot read during upload: {e.strerror or e}") from None
    summary.transferred = len(todo)
    summary.bytes_transferred = sum(digests[r].size for r in todo)

    # End-to-end check where S3 could not do it: an object sent with our own checksum was checked by S3
    # on arrival (BadDigest otherwise); a SHA256 multipart object got per-part checksums computed by
    # botocore while reading, so compare its stored composite with the one from our own read.
    def stored_ok(rel: str) -> str | None:
        h = head(client, dest.bucket, dest.key(rel))
        got = stored_checksum(h) if h else None
        return (
            None
            if same_checksum(got, digests[rel].s3_checksum)
            else f"{rel} (expected {digests[rel].s3_checksum}, S3 has {got})"
        )

    unchecked = [r for r in todo if algo == SHA256 and digests[r].part_size > 0]
    bad = [b for b in _parallel(stored_ok, unchecked, settings.concurrency) if b]
    if bad:
        raise StorageError(f"{dest}: uploaded objects do not match the local files: {'; '.join(bad[:10])}")
    summary.verified = True
    if victims:
        _delete_objects(client, dest, victims)
        summary.deleted = victims
    old = read_manifest(client, dest) if not delete else None
    manifest = Manifest(files=dict(digests))
    if old:  # keep entries for objects this upload did not touch and that still exist
        for rel, d in old.files.items():
            if rel not in manifest.files and remote.get(rel) == d.size:
                manifest.files[rel] = d
    try:
        write_manifest(client, dest, manifest)
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(dest)) from None
    summary.seconds = time.perf_counter() - t0
    return summary


def _checksum_args(algo: str, d: FileDigest) -> dict[str, str]:
    """Send the checksum we computed, not one botocore recomputes from the bytes it reads: S3 then rejects
    an object whose bytes changed after we hashed them (BadDigest). A SHA256 multipart checksum is a
    composite of per-part values, which only botocore can send part by part; CRC64NVME is full-object
    even for multipart uploads."""
    value = d.s3_checksum.split(":", 1)[1]
    if algo == SHA256 and d.part_size == 0:
        return {"ChecksumAlgorithm": algo, "ChecksumSHA256": value}
    if algo == CRC64NVME:
        return {"ChecksumAlgorithm": algo, "ChecksumCRC64NVME": value}
    return {"ChecksumAlgorithm": algo}


def _delete_objects(client: Any, url: S3Url, rels: list[str]) -> None:
    for i in range(0, len(rels), 1000):
        batch = [{"Key": url.key(r)} for r in rels[i : i + 1000]]
        resp = client.delete_objects(Bucket=url.bucket, Delete={"Objects": batch, "Quiet": True})
        if resp.get("Errors"):
            e = resp["Errors"][0]
            raise StorageError(f"{url}: could not delete {e.get('Key')}: {e.get('Code')} {e.get('Message', '')}")


# --------------------------------------------------------------------------- download


def _tmp_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.{os.getpid()}{TMP_SUFFIX}")


def _clean_stale_tmp(root: Path) -> None:
    if root.is_dir():
        for p in root.rglob(f"*{TMP_SUFFIX}"):
            p.unlink(missing_ok=True)


def download(
    src: S3Url,
    local: Path,
    client: Any,
    settings: TransferSettings = TransferSettings(),
    *,
    delete: bool = False,
    yes: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> TransferSummary:
    """Make `local` hold the objects under `src`; every written file is hashed and checked first."""
    from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError
    from s3transfer.manager import TransferManager

    t0 = time.perf_counter()
    local = Path(local)
    check_bucket(client, src.bucket)
    manifest = read_manifest(client, src) or Manifest()
    remote = list_objects(client, src)
    if not remote and src.prefix:  # a single object
        h = head(client, src.bucket, src.prefix)
        if h is None:
            raise StorageError(f"{src}: no such object or prefix")
        parent, _, name = src.prefix.rpartition("/")
        src = S3Url(src.bucket, parent)
        remote = {name: int(h["ContentLength"])}
        manifest = read_manifest(client, src) or Manifest()
        if delete:
            raise StorageError(f"{src.child(name)}: --delete needs a prefix as the source, not one object")
        if local.is_dir():
            local = local / name
        local_root, targets = local.parent, {name: local}
    else:
        local_root, targets = local, {rel: local / rel for rel in remote}
    if local_root.exists() and not local_root.is_dir():
        raise StorageError(f"{local_root}: exists and is not a directory")
    summary = TransferSummary("download", str(src), str(local), files=len(remote))
    summary.bytes_total = sum(remote.values())
    victims = []
    if delete and local_root.is_dir():
        victims = sorted(set(local_files(local_root)) - set(remote))
        if victims and not yes:
            raise _refuse_delete(victims, str(local_root))
    _clean_stale_tmp(local_root)

    def unchanged(rel: str) -> bool:
        t, d = targets[rel], manifest.files.get(rel)
        if not t.is_file() or t.stat().st_size != remote[rel]:
            return False
        if d is None:  # no manifest: compare with the stored checksum when it is a whole-object one
            h = head(client, src.bucket, src.key(rel))
            got = stored_checksum(h) if h else None
            if not got or not got.startswith("SHA256:") or "-" in got:
                return False
            return digest_file(t, 0).s3_checksum == got
        return d.size == remote[rel] and digest_file(t, 0).sha256 == d.sha256

    rels = sorted(remote)
    todo = [rel for rel, same in zip(rels, _parallel(unchanged, rels, settings.hash_workers), strict=True) if not same]
    summary.skipped = len(rels) - len(todo)
    tmps: list[Path] = []
    try:
        with byte_progress(f"download <- {src}", console, progress) as bar:
            bar.add_total(summary.bytes_total)
            bar.advance(sum(remote[r] for r in rels if r not in set(todo)))
            # each file is hashed as soon as it is down, while the rest are still downloading
            with (
                ThreadPoolExecutor(max_workers=settings.hash_workers) as hashers,
                TransferManager(client, settings.transfer_config()) as tm,
            ):
                jobs = []
                for rel in todo:
                    t = targets[rel]
                    t.parent.mkdir(parents=True, exist_ok=True)
                    tmp = _tmp_path(t)
                    tmps.append(tmp)
                    jobs.append(
                        (rel, tmp, tm.download(src.bucket, src.key(rel), str(tmp), subscribers=[bar.subscriber()]))
                    )
                bad: list[str] = []
                checks = []
                for job in jobs:
                    try:
                        job[2].result()
                    except FlexibleChecksumError:  # botocore hashed the body: not what S3 says it stores
                        bad.append(f"{job[0]} (bytes differ from the checksum S3 stores)")
                        continue
                    checks.append(hashers.submit(_check_download, job, src, manifest, client))
                bad += [b for b in (c.result() for c in checks) if b]
            if bad:
                raise StorageError(f"{src}: downloaded files do not match: {'; '.join(bad[:10])} (nothing replaced)")
            for rel, tmp, _ in jobs:
                os.replace(tmp, targets[rel])
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(src)) from None
    except OSError as e:
        raise StorageError(f"{local}: cannot write: {e.strerror or e}") from None
    finally:
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    for rel in victims:
        (local_root / rel).unlink(missing_ok=True)
    summary.deleted = victims
    summary.transferred = len(todo)
    summary.bytes_transferred = sum(remote[r] for r in todo)
    summary.verified = True
    summary.seconds = time.perf_counter() - t0
    return summary


def _check_download(job: tuple[str, Path, Any], src: S3Url, manifest: Manifest, client: Any) -> str | None:
    """None when the temp file holds the right bytes: the manifest's sha256, else S3's stored checksum."""
    rel, tmp, _ = job
    d = manifest.files.get(rel)
    if d is not None:
        got = digest_file(tmp, 0)
        return None if got.sha256 == d.sha256 and got.size == d.size else f"{rel} (sha256 differs from the manifest)"
    h = head(client, src.bucket, src.key(rel))
    stored = stored_checksum(h) if h else None
    if stored and stored.startswith("SHA256:") and "-" not in stored:
        return None if digest_file(tmp, 0).s3_checksum == stored else f"{rel} (sha256 differs from S3's checksum)"
    return None  # no manifest entry and no whole-object checksum: size was checked by s3transfer


# --------------------------------------------------------------------------- entry points


def sync(
    src: str,
    dst: str,
    opts: S3Options | None = None,
    settings: TransferSettings = TransferSettings(),
    *,
    delete: bool = False,
    yes: bool = False,
    console: Console | None = None,
    progress: bool = True,
) -> TransferSummary:
    """Either direction, chosen by which side is an s3:// URL."""
    if is_s3(src) == is_s3(dst):
        raise StorageError(f"{src} -> {dst}: exactly one side must be an s3:// URL")
    client = make_client(opts, validate_responses=not is_s3(src))  # downloads are hashed against the manifest
    if is_s3(dst):
        local = Path(src).expanduser()
        if not local.exists():
            raise StorageError(f"{local}: no such file or directory")
        return upload(
            local, parse_s3_url(dst), client, settings, delete=delete, yes=yes, console=console, progress=progress
        )
    return download(
        parse_s3_url(src),
        Path(dst).expanduser(),
        client,
        settings,
        delete=delete,
        yes=yes,
        console=console,
        progress=progress,
    )


__all__ = ["ByteProgress", "TransferSettings", "TransferSummary", "download", "sync", "upload"]
