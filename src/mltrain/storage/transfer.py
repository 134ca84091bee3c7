"""Upload, download and sync between a local tree and an S3 prefix: parallel multipart through
s3transfer, S3 additional checksums, skip-what-is-already-there, and a manifest written last.

Resumability is per file: a rerun hashes the local files, asks S3 which objects already hold the
same bytes (size + stored checksum) and sends only the rest. Multipart uploads left behind by a
killed run (SIGKILL gives s3transfer no chance to abort them) are aborted before anything is sent,
so none is ever orphaned. Downloads land in a temp file beside the target, are hashed, and are
renamed only when they match: nothing half-written is left at a real path. A download writes only
what the manifest lists (each file is hashed against it); other objects are named and skipped unless
asked for. Our temp files are never data: an upload skips them, and a download removes every one a
killed run left, keeping the complete ones that hash right instead of downloading them again.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from mltrain.storage.client import S3Options, check_bucket, make_client, storage_error, unless_missing
from mltrain.storage.digest import (
    CRC64NVME,
    SHA256,
    FileDigest,
    StreamDigest,
    choose_algorithm,
    crc64nvme_of,
    digest_file,
    local_checksum,
    manifest_crc,
    part_size_for,
    same_checksum,
    stored_checksum,
)
from mltrain.storage.engine import (
    choose_engine,
    crt_error_text,
    is_crt_checksum_mismatch,
    open_manager,
    requested_engine,
)
from mltrain.storage.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from mltrain.storage.progress import ByteProgress, byte_progress, rate_text
from mltrain.storage.url import S3Url, StorageError, is_s3, parse_s3_url

TMP_SUFFIX = ".mltrain-tmp"
MiB = 1 << 20
# `.<name>.<pid>.mltrain-tmp`, and the `.<8 hex digits>` s3transfer appends to the file it writes first
# (it renames that to our name once every byte is in)
_TMP_RE = re.compile(r"^\.(?P<stem>.+)\.(?P<pid>\d+)\.mltrain-tmp(?:\.[0-9A-Fa-f]{8})?$")
_LONG_NAME = 200  # longer target names are shortened in temp names: s3transfer's suffix must still fit 255


def is_our_temp(name: str) -> bool:
    """True for a file name a download of ours writes before the bytes are checked: never data."""
    return _TMP_RE.match(name) is not None


def _tmp_stem(name: str) -> str:
    if len(name) <= _LONG_NAME:
        return name
    return f"{name[:150]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"


@dataclass(frozen=True)
class TransferSettings:
    """Tuning knobs (s3transfer's TransferConfig) and the checksum algorithm."""

    concurrency: int = 16
    part_size: int = 16 * MiB
    threshold: int = 16 * MiB
    checksum: str = "auto"
    hash_workers: int = 4
    engine: str = ""  # auto | crt | classic; "" = MLTRAIN_S3_ENGINE, else auto (see storage/engine.py)

    def transfer_config(self) -> Any:
        from boto3.s3.transfer import TransferConfig

        return TransferConfig(
            multipart_threshold=self.threshold,
            multipart_chunksize=self.part_size,
            max_concurrency=self.concurrency,
            max_io_queue=100,  # received chunks waiting for the one writer thread: <= 100 MiB (1000: 800 MB RSS per GiB)
            io_chunksize=1 << 20,  # reads off the socket per queue item: 1 MiB cost ~7% less CPU than 256 KiB here
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
    recovered: int = 0  # complete temps of a killed download that hashed right and were kept
    unlisted: list[str] = field(default_factory=list)  # objects the manifest does not list, not downloaded
    unchecked: list[str] = field(default_factory=list)  # downloaded with no checksum to check (size only)
    deleted: list[str] = field(default_factory=list)
    aborted_multipart_uploads: int = 0
    checksum_algorithm: str = ""
    verified: bool = False
    transfer_seconds: float = 0.0  # the progress bar's interval: its rate and ours are the same figure
    seconds: float = 0.0  # the whole command
    engine: str = ""  # the transfer engine that ran: crt or classic ("" before one ran)
    engine_reason: str = ""  # why classic, when the CRT was not used

    @property
    def mib_per_s(self) -> float | None:
        return self.bytes_transferred / MiB / self.transfer_seconds if self.transfer_seconds > 0 else None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.engine:  # nothing was transferred through an engine
            del d["engine"], d["engine_reason"]
        rate = self.mib_per_s
        d["mib_per_s"] = None if rate is None else round(rate, 2)
        return d

    def line(self) -> str:
        """The CLI's summary: what moved, at which rate, and exactly what was checked and what was not."""
        verb = "uploaded" if self.direction == "upload" else "downloaded"
        parts = [f"{self.direction}: {self.transferred} file(s) {verb}"]
        if self.recovered:
            parts.append(f"{self.recovered} kept from an interrupted download")
        parts.append(f"{self.skipped} already there")
        text = ", ".join(parts) + (
            f"; {self.bytes_transferred / MiB:.1f} MiB in {self.transfer_seconds:.1f}s "
            f"({rate_text(self.mib_per_s)}), {self.seconds:.1f}s in all"
            + (f", {self.engine} engine" if self.engine else "")
        )
        if self.unchecked:
            text += (
                f"; checksums verified except {len(self.unchecked)} file(s) checked by size only "
                f"(S3 stores no whole-object checksum for them): {_names(self.unchecked)}"
            )
        else:
            text += "; checksums verified"
        if self.unlisted:
            text += (
                f"; {len(self.unlisted)} object(s) not in the manifest skipped: {_names(self.unlisted)} "
                "(--unlisted downloads them)"
            )
        if self.deleted:
            text += f"; {len(self.deleted)} deleted"
        if self.aborted_multipart_uploads:
            text += f"; {self.aborted_multipart_uploads} stale multipart upload(s) aborted"
        return text


def _names(rels: list[str], limit: int = 10) -> str:
    return ", ".join(rels[:limit]) + (f", ... ({len(rels) - limit} more)" if len(rels) > limit else "")


# --------------------------------------------------------------------------- listing


def local_files(root: Path) -> dict[str, Path]:
    """Relative POSIX path -> file, for a file or a directory tree (our temp files and manifests excluded)."""
    if root.is_file():
        return {root.name: root}
    if not root.is_dir():
        raise StorageError(f"{root}: no such file or directory")
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and not is_our_temp(p.name) and p.name != MANIFEST_NAME:
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
    return unless_missing(
        lambda: client.head_object(Bucket=bucket, Key=key, ChecksumMode="ENABLED"), f"s3://{bucket}/{key}"
    )


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

    t0 = time.perf_counter()
    local = Path(local)
    if delete and local.is_file():
        raise StorageError(f"{local}: --delete needs a directory as the source, not one file")
    files = local_files(local)
    if exclude:
        files = {rel: p for rel, p in files.items() if not exclude(rel)}
    algo = choose_algorithm(settings.checksum)
    engine = choose_engine(requested_engine(settings.engine), algo, "upload", client)
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
            tm, engine = open_manager(engine, client, settings)
            with ThreadPoolExecutor(max_workers=settings.hash_workers) as hashers, tm:
                futures = []
                for rel, d, same in hashers.map(prepare, sorted(files)):
                    digests[rel] = d
                    summary.bytes_total += d.size
                    bar.add_total(d.size)
                    if same:
                        summary.skipped += 1
                        bar.skip(d.size)
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
        except Exception as e:  # the CRT's own errors (no botocore type)
            crt = crt_error_text(e)
            if crt is None:
                raise
            raise StorageError(f"{dest}: upload failed: {crt}") from None
    summary.engine, summary.engine_reason = engine.name, engine.reason
    summary.transfer_seconds = bar.seconds
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
    return target.with_name(f".{_tmp_stem(target.name)}.{os.getpid()}{TMP_SUFFIX}")


def _our_temps(root: Path, target: Path | None = None) -> list[Path]:
    """Every temp file of ours under `root` (recursively), or only the temps of `target` (beside it)."""
    if target is not None:
        stem = _tmp_stem(target.name)
        if not target.parent.is_dir():
            return []
        return sorted(
            p for p in target.parent.glob(f".*{TMP_SUFFIX}*") if (m := _TMP_RE.match(p.name)) and m["stem"] == stem
        )
    if not root.is_dir():
        return []
    return sorted(p for p in root.rglob(f".*{TMP_SUFFIX}*") if p.is_file() and is_our_temp(p.name))


def whole_object_checksum(h: dict) -> str | None:
    """S3's stored checksum when it covers the object's bytes as one piece ("<ALGO>:<value>"), else None.

    CRC64NVME is full-object even for multipart uploads; SHA256 and CRC32 of a multipart upload are
    composites of part checksums (an ETag with "-N" says it was one, even where the store leaves "-N"
    off the checksum), which only the manifest's part size can reproduce."""
    got = stored_checksum(h)
    if not got:
        return None
    if got.startswith(f"{CRC64NVME}:") or h.get("ChecksumType") == "FULL_OBJECT":
        return got
    return None if "-" in got or "-" in str(h.get("ETag", "")) else got


def _select(
    src: S3Url, remote: dict[str, int], manifest: Manifest | None, unlisted: bool | Collection[str], single: str | None
) -> tuple[list[str], list[str]]:
    """(objects to download, objects skipped because the manifest does not list them), both sorted.

    StorageError instead when the manifest lists files S3 lacks (the data set is incomplete), or when
    nothing would be downloaded because nothing is listed (say how to get it, rather than do nothing)."""
    listed = manifest.files if manifest is not None else {}

    def asked_for(rel: str) -> bool:
        return unlisted is True or (not isinstance(unlisted, bool) and rel in unlisted)

    skipped = sorted(r for r in remote if r not in listed and not asked_for(r))
    if single is None and manifest is not None:
        missing = sorted(set(listed) - set(remote))
        if missing:
            raise StorageError(
                f"{src}: {len(missing)} file(s) the manifest lists are not on S3: {_names(missing)} "
                f"(`mltrain data verify {src}` lists every problem); nothing downloaded"
            )
    if remote and len(skipped) == len(remote):
        how = "checked against the checksum S3 stores (by size where it stores none)"
        if manifest is None:
            raise StorageError(
                f"{src}: no {MANIFEST_NAME}, so nothing under it can be checked against an upload's hashes; "
                f"rerun with --unlisted to download its {len(remote)} object(s), {how}"
            )
        if single is not None:
            raise StorageError(f"{src.child(single)}: not in the manifest of {src}; --unlisted downloads it, {how}")
        raise StorageError(
            f"{src}: none of its {len(remote)} object(s) is in its manifest; --unlisted downloads them, {how}"
        )
    return sorted(r for r in remote if r not in skipped), skipped


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
    unlisted: bool | Collection[str] = False,
) -> TransferSummary:
    """Make `local` hold the objects under `src` that its manifest lists; every written file is hashed
    and checked first. `unlisted`: True also downloads objects the manifest does not list (checked
    against S3's whole-object checksum, by size where it stores none), or the names given."""
    from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

    t0 = time.perf_counter()
    local = Path(local)
    check_bucket(client, src.bucket)
    manifest = read_manifest(client, src)
    remote = list_objects(client, src)
    single: str | None = None  # the object's name when `src` names one object
    if not remote and src.prefix:
        h = head(client, src.bucket, src.prefix)
        if h is None:
            raise StorageError(f"{src}: no such object or prefix")
        parent, _, single = src.prefix.rpartition("/")
        src = S3Url(src.bucket, parent)
        remote = {single: int(h["ContentLength"])}
        manifest = read_manifest(client, src)
        if delete:
            raise StorageError(f"{src.child(single)}: --delete needs a prefix as the source, not one object")
        if local.is_dir():
            local = local / single
        local_root, targets = local.parent, {single: local}
    else:
        local_root, targets = local, {rel: local / rel for rel in remote}
    if local_root.exists() and not local_root.is_dir():
        raise StorageError(f"{local_root}: exists and is not a directory")
    listed = manifest.files if manifest is not None else {}
    engine = choose_engine(requested_engine(settings.engine), "", "download", client)
    rels, skipped_unlisted = _select(src, remote, manifest, unlisted, single)
    summary = TransferSummary("download", str(src), str(local), files=len(rels), unlisted=skipped_unlisted)
    summary.bytes_total = sum(remote[r] for r in rels)
    victims = []
    if delete and local_root.is_dir():
        victims = sorted(set(local_files(local_root)) - set(remote))
        if victims and not yes:
            raise _refuse_delete(victims, str(local_root))

    heads: dict[str, str | None] = {}

    def stored_whole(rel: str) -> str | None:
        if rel not in heads:
            h = head(client, src.bucket, src.key(rel))
            heads[rel] = whole_object_checksum(h) if h else None
        return heads[rel]

    def right_bytes(p: Path, rel: str) -> bool:
        """`p` holds the bytes of object `rel`: the manifest's size and sha256, else S3's whole-object checksum."""
        if p.stat().st_size != remote[rel]:
            return False
        d = listed.get(rel)
        if manifest_crc(d):
            return d.size == remote[rel] and crc64nvme_of(p) == d.s3_checksum
        if d is not None:
            return d.size == remote[rel] and digest_file(p, 0).sha256 == d.sha256
        want = stored_whole(rel)
        return want is not None and local_checksum(p, want.split(":", 1)[0]) == want

    # temps a killed run left (ours, or s3transfer's inside ours): one whose bytes hash right is kept
    temps = _our_temps(local_root, targets[single] if single is not None else None)
    by_stem = {(targets[r].parent, _tmp_stem(targets[r].name)): r for r in rels}
    candidates: dict[str, list[Path]] = {}
    for p in temps:
        m = _TMP_RE.match(p.name)
        rel = by_stem.get((p.parent, m["stem"])) if m else None
        if rel is not None:
            candidates.setdefault(rel, []).append(p)

    def settle(rel: str) -> Path | None:
        """The file that already holds `rel`'s bytes: its target, or a temp; None to download."""
        t = targets[rel]
        if t.is_file() and right_bytes(t, rel):
            return t
        return next((c for c in candidates.get(rel, []) if right_bytes(c, rel)), None)

    try:
        have = dict(zip(rels, _parallel(settle, rels, settings.hash_workers), strict=True))
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(src)) from None
    except OSError as e:
        raise StorageError(f"{local}: cannot read: {e.strerror or e}") from None
    kept = {rel: p for rel, p in have.items() if p is not None and p != targets[rel]}
    for p in temps:
        if p not in kept.values():
            p.unlink(missing_ok=True)
    todo = [rel for rel in rels if have[rel] is None]
    summary.skipped = len(rels) - len(todo) - len(kept)
    summary.recovered = len(kept)

    def check(rel: str, tmp: Path, streamed: StreamDigest) -> tuple[str | None, bool]:
        """(problem, checked): the manifest's CRC64NVME (or sha256 where it records none), else S3's
        whole-object checksum, else size only; from the hashes taken while the bytes streamed in (a second
        read only for CRC32 and the like)."""
        d = listed.get(rel)
        if not streamed.complete:  # a gap: some range never arrived
            return f"{rel} (bytes missing from the download)", True
        if manifest_crc(d):
            ok = streamed.s3_checksum(CRC64NVME) == d.s3_checksum and streamed.size == d.size
            return (None if ok else f"{rel} (crc64nvme differs from the manifest)"), True
        if d is not None:
            ok = streamed.sha256 == d.sha256 and streamed.size == d.size
            return (None if ok else f"{rel} (sha256 differs from the manifest)"), True
        want = stored_whole(rel)
        algo_name = want.split(":", 1)[0] if want else ""
        have_local = (streamed.s3_checksum(algo_name) or local_checksum(tmp, algo_name)) if want else None
        if have_local is None:  # s3transfer checked the size; nothing else can be
            return None, False
        algo = want.split(":", 1)[0].lower()
        return (None if have_local == want else f"{rel} ({algo} differs from S3's checksum)"), True

    tmps: list[Path] = list(kept.values())
    sinks: list[StreamDigest] = []
    try:
        with byte_progress(f"download <- {src}", console, progress) as bar:
            bar.add_total(summary.bytes_total)
            bar.skip(sum(remote[r] for r in rels if have[r] is not None))
            # every body is hashed as it streams into its temp file (one pass); a file is checked the
            # moment it is complete, while the rest are still downloading
            tm, engine = open_manager(engine, client, settings)
            with tm:
                jobs = []
                for rel in todo:
                    t = targets[rel]
                    t.parent.mkdir(parents=True, exist_ok=True)
                    tmp = _tmp_path(t)
                    tmps.append(tmp)
                    entry = listed.get(rel)
                    by_crc = manifest_crc(entry)
                    sink = StreamDigest(tmp, crc=entry is None or by_crc, sha=not by_crc)
                    sinks.append(sink)
                    fut = tm.download(src.bucket, src.key(rel), sink, subscribers=[bar.subscriber()])
                    jobs.append((rel, tmp, sink, fut))
                bad: list[str] = []
                for rel, tmp, sink, fut in jobs:
                    try:
                        fut.result()
                    except FlexibleChecksumError:  # botocore hashed the body: not what S3 says it stores
                        sink.close(complete=False)
                        bad.append(f"{rel} (bytes differ from the checksum S3 stores)")
                        continue
                    except Exception as e:
                        sink.close(complete=False)
                        if not is_crt_checksum_mismatch(e):
                            raise
                        bad.append(f"{rel} (bytes differ from the checksum S3 stores)")
                        continue
                    sink.close()
                    problem, checked = check(rel, tmp, sink)
                    if problem:
                        bad.append(problem)
                    elif not checked:
                        summary.unchecked.append(rel)
        summary.engine, summary.engine_reason = engine.name, engine.reason
        summary.transfer_seconds = bar.seconds
        if bad:
            raise StorageError(f"{src}: downloaded files do not match: {'; '.join(bad[:10])} (nothing replaced)")
        for rel, tmp, _, _ in jobs:
            os.replace(tmp, targets[rel])
        for rel, tmp in kept.items():
            os.replace(tmp, targets[rel])
    except (BotoCoreError, ClientError) as e:
        raise storage_error(e, str(src)) from None
    except OSError as e:
        raise StorageError(f"{local}: cannot write: {e.strerror or e}") from None
    except Exception as e:  # the CRT's own errors (no botocore type)
        crt = crt_error_text(e)
        if crt is None:
            raise
        raise StorageError(f"{src}: download failed: {crt}") from None
    finally:
        for sink in sinks:  # a failed run: nothing half-written stays behind
            sink.close(complete=False)
            sink.partial.unlink(missing_ok=True)
        for tmp in tmps:
            tmp.unlink(missing_ok=True)
    for rel in victims:
        (local_root / rel).unlink(missing_ok=True)
    summary.deleted = victims
    summary.transferred = len(todo)
    summary.bytes_transferred = sum(remote[r] for r in todo)
    summary.unchecked.sort()
    summary.verified = not summary.unchecked
    summary.seconds = time.perf_counter() - t0
    return summary


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
    unlisted: bool = False,
) -> TransferSummary:
    """Either direction, chosen by which side is an s3:// URL (`unlisted`: see `download`)."""
    if is_s3(src) == is_s3(dst):
        raise StorageError(f"{src} -> {dst}: exactly one side must be an s3:// URL")
    if unlisted and not is_s3(src):
        raise StorageError("--unlisted applies to downloads (s3:// source): an upload sends every local file")
    # downloads are hashed against the manifest; uploads send the checksum of their own read, signed
    client = make_client(opts, validate_responses=not is_s3(src), sign_payload=not is_s3(dst))
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
        unlisted=unlisted,
    )


__all__ = ["ByteProgress", "TransferSettings", "TransferSummary", "download", "sync", "upload"]
