"""`data.sources` entries on S3: `s3://bucket/prefix/*.jsonl`, `s3://bucket/prefix/` or one object.

Objects are listed once, in key order (the same order on every run, so the corpus fingerprint is
stable), and read as streams: `prepare` never stages the corpus on local disk. The client comes
from boto3's own chain (AWS_PROFILE, AWS_ENDPOINT_URL, instance role...).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Iterator
from typing import Any

from mltrain.errors import DataError
from mltrain.storage.url import parse_s3_url

_GLOB_CHARS = "*?["
_local = threading.local()


def _client() -> Any:
    if getattr(_local, "client", None) is None:
        from mltrain.storage.client import make_client

        _local.client = make_client()
    return _local.client


def list_s3_source(spec: str, suffixes: tuple[str, ...]) -> list[tuple[str, str]]:
    """(s3:// URL, lower-case suffix) of every object an entry names, sorted by key; DataError if none."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mltrain.storage.client import check_bucket, describe

    url = parse_s3_url(spec)
    raw_key = spec[len("s3://") + len(url.bucket) + 1 :]
    glob_at = min((raw_key.find(c) for c in _GLOB_CHARS if c in raw_key), default=-1)
    client = _client()
    check_bucket(client, url.bucket)
    try:
        if glob_at >= 0:
            list_prefix, keep = raw_key[:glob_at], (lambda k: fnmatch.fnmatchcase(k, raw_key))
        else:
            try:
                client.head_object(Bucket=url.bucket, Key=url.prefix)
                return [(f"s3://{url.bucket}/{url.prefix}", _suffix(url.prefix))] if url.prefix else []
            except ClientError:
                pass
            list_prefix, keep = url.list_prefix, (lambda k: _suffix(k) in suffixes)
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=url.bucket, Prefix=list_prefix):
            keys += [o["Key"] for o in page.get("Contents", []) if not o["Key"].endswith("/") and keep(o["Key"])]
    except (BotoCoreError, ClientError) as e:
        raise DataError(f"data.sources: {describe(e, spec)}") from None
    if not keys:
        raise DataError(f"data.sources: {spec!r}: matches no objects")
    return [(f"s3://{url.bucket}/{k}", _suffix(k)) for k in sorted(keys)]


def _suffix(key: str) -> str:
    name = key.rsplit("/", 1)[-1]
    return "." + name.rsplit(".", 1)[-1].lower() if "." in name else ""


def _body(url: str) -> Any:
    from botocore.exceptions import BotoCoreError, ClientError

    from mltrain.storage.client import describe

    u = parse_s3_url(url)
    try:
        return _client().get_object(Bucket=u.bucket, Key=u.prefix)["Body"]
    except (BotoCoreError, ClientError) as e:
        raise DataError(describe(e, url)) from None


def stream_lines(url: str, chunk_bytes: int = 1 << 20) -> Iterator[bytes]:
    """The object's lines (with their newline), read in `chunk_bytes` pieces."""
    from botocore.exceptions import BotoCoreError

    from mltrain.storage.client import describe

    body = _body(url)
    try:
        yield from body.iter_lines(chunk_size=chunk_bytes, keepends=True)
    except BotoCoreError as e:
        raise DataError(describe(e, url)) from None
    finally:
        body.close()


def read_object(url: str) -> bytes:
    from botocore.exceptions import BotoCoreError

    from mltrain.storage.client import describe

    body = _body(url)
    try:
        return body.read()
    except BotoCoreError as e:
        raise DataError(describe(e, url)) from None
    finally:
        body.close()
