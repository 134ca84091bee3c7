"""`mltrain data verify`: every object under a prefix against the manifest written at upload.

The cheap check compares each object's size and the additional checksum S3 stores with the value
computed from the local bytes at upload time. S3 (but not every S3-compatible store, nor moto)
rejects a part whose bytes do not match the checksum sent with it, so `--deep` also downloads
every object and hashes it: the only check that trusts nothing on the server side.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console

from mltrain.storage.digest import same_checksum, stored_checksum
from mltrain.storage.manifest import MANIFEST_NAME, read_manifest
from mltrain.storage.progress import byte_progress
from mltrain.storage.transfer import head, list_objects
from mltrain.storage.url import S3Url, StorageError


@dataclass
class VerifyReport:
    url: str
    checked: int = 0
    bytes: int = 0
    deep: bool = False
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # "rel: why"

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.mismatched)

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "ok": self.ok}


def _deep_sha256(client: Any, url: S3Url, rel: str, on_bytes: Any) -> str:
    h = hashlib.sha256()
    body = client.get_object(Bucket=url.bucket, Key=url.key(rel))["Body"]
    for chunk in body.iter_chunks(1 << 20):
        h.update(chunk)
        on_bytes(len(chunk))
    return h.hexdigest()


def verify_prefix(
    client: Any,
    url: S3Url,
    deep: bool = False,
    workers: int = 16,
    console: Console | None = None,
    progress: bool = True,
) -> VerifyReport:
    """Compare the objects under `url` with its manifest; the report names every problem."""
    from botocore.exceptions import BotoCoreError, ClientError, FlexibleChecksumError

    from mltrain.storage.client import check_bucket, storage_error

    check_bucket(client, url.bucket)
    manifest = read_manifest(client, url)
    if manifest is None:
        raise StorageError(f"{url}: no {MANIFEST_NAME} (upload with `mltrain data upload` first)")
    remote = list_objects(client, url)
    report = VerifyReport(str(url), deep=deep)
    report.missing = sorted(set(manifest.files) - set(remote))
    report.extra = sorted(set(remote) - set(manifest.files))
    present = sorted(set(manifest.files) & set(remote))

    def check(rel: str) -> str | None:
        want = manifest.files[rel]
        if remote[rel] != want.size:
            return f"{rel}: {remote[rel]} bytes, manifest says {want.size}"
        h = head(client, url.bucket, url.key(rel))
        if h is None:
            return f"{rel}: disappeared during the check"
        got = stored_checksum(h)
        if not same_checksum(got, want.s3_checksum):
            return f"{rel}: S3 checksum {got or 'none'}, manifest expects {want.s3_checksum}"
        if deep:
            try:
                sha = _deep_sha256(client, url, rel, bar.advance)
            except FlexibleChecksumError:  # botocore hashed the body too and it disagrees with the stored value
                return f"{rel}: content does not match the checksum S3 stores"
            if sha != want.sha256:
                return f"{rel}: content sha256 {sha[:16]}..., manifest says {want.sha256[:16]}..."
        else:  # checked without reading its bytes: fills the bar, not the rate
            bar.skip(want.size)
        return None

    with byte_progress(f"verify {url}{' --deep' if deep else ''}", console, progress) as bar:
        bar.add_total(sum(manifest.files[r].size for r in present))
        try:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(check, present))
        except (BotoCoreError, ClientError) as e:
            raise storage_error(e, str(url)) from None
    report.mismatched = [r for r in results if r]
    report.checked = len(present)
    report.bytes = sum(manifest.files[r].size for r in present)
    return report
