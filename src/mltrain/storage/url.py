"""`s3://bucket/prefix` parsing, in one place."""

from __future__ import annotations

import re
from dataclasses import dataclass

from mltrain.errors import MltrainError


class StorageError(MltrainError):
    """S3 or the local side of a transfer failed: missing bucket, bad credentials, unreachable endpoint,
    missing local path, or a transferred file that does not match its checksum."""

    exit_code = 1


@dataclass(frozen=True)
class S3Url:
    """A bucket and a key prefix without leading or trailing slashes ("" is the bucket root)."""

    bucket: str
    prefix: str

    def key(self, rel: str) -> str:
        """The object key of relative path `rel` under this prefix."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def rel(self, key: str) -> str:
        """The relative path of object `key` under this prefix."""
        return key[len(self.prefix) + 1 :] if self.prefix else key

    def child(self, rel: str) -> S3Url:
        return S3Url(self.bucket, self.key(rel.strip("/")))

    @property
    def list_prefix(self) -> str:
        """What to pass to ListObjectsV2 so `data` does not also match `data2/...`."""
        return f"{self.prefix}/" if self.prefix else ""

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


# what botocore accepts before it sends anything (legacy us-east-1 names and S3-compatible stores allow more
# than AWS's rule today); an access point ARN is passed on as is
_BUCKET_RE = re.compile(r"^[a-zA-Z0-9.\-_]{1,255}$")
BUCKET_RULE = "S3 bucket names are 3-63 characters: lowercase letters, digits, '.' and '-'"


def check_bucket_name(bucket: str, where: str) -> None:
    """StorageError (one line, naming `where`) for a name botocore would refuse with its regexes."""
    if not (_BUCKET_RE.match(bucket) or bucket.startswith("arn:")):
        raise StorageError(f"{where}: {bucket!r} is not a valid bucket name ({BUCKET_RULE})")


def is_s3(text: str) -> bool:
    return str(text).startswith("s3://")


def parse_s3_url(text: str) -> S3Url:
    """Parse `s3://bucket[/prefix]`; StorageError naming the text when it is not one."""
    if not is_s3(text):
        raise StorageError(f"{text!r}: not an s3:// URL (expected s3://bucket/prefix)")
    rest = text[len("s3://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise StorageError(f"{text!r}: no bucket name (expected s3://bucket/prefix)")
    check_bucket_name(bucket, text)
    return S3Url(bucket, prefix.strip("/"))
