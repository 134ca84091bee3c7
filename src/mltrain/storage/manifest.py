"""The transfer manifest: one JSON object next to the data, written after every file is in place.

It records each file's relative path, size, sha256, the part size it was uploaded with and the
additional checksum S3 must store for it, so `mltrain data verify` can check a prefix without the
local files, and a download can prove each file it wrote.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from mltrain.storage.digest import FileDigest
from mltrain.storage.url import S3Url, StorageError

MANIFEST_NAME = ".mltrain-manifest.json"
VERSION = 1


@dataclass
class Manifest:
    files: dict[str, FileDigest] = field(default_factory=dict)
    created: float = field(default_factory=time.time)

    @property
    def total_bytes(self) -> int:
        return sum(d.size for d in self.files.values())

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": VERSION,
                "created": self.created,
                "total_bytes": self.total_bytes,
                "files": {rel: asdict(d) for rel, d in sorted(self.files.items())},
            },
            indent=1,
        )

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            raw = json.loads(text)
            files = {rel: FileDigest(**entry) for rel, entry in raw["files"].items()}
            return cls(files=files, created=float(raw.get("created", 0.0)))
        except (ValueError, KeyError, TypeError) as e:
            raise StorageError(f"{where}: unreadable manifest ({type(e).__name__}: {e})") from None


def read_manifest(client: Any, url: S3Url) -> Manifest | None:
    """The manifest under `url`, or None when there is none."""
    from mltrain.storage.client import unless_missing

    key = url.key(MANIFEST_NAME)
    where = f"s3://{url.bucket}/{key}"
    body = unless_missing(lambda: client.get_object(Bucket=url.bucket, Key=key)["Body"].read(), where)
    return None if body is None else Manifest.from_json(body.decode("utf-8", "replace"), where)


def write_manifest(client: Any, url: S3Url, manifest: Manifest) -> None:
    client.put_object(
        Bucket=url.bucket,
        Key=url.key(MANIFEST_NAME),
        Body=manifest.to_json().encode(),
        ContentType="application/json",
        ChecksumAlgorithm="SHA256",
    )
