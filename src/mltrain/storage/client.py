"""One S3 client per command, configured the boto3 way, and botocore errors turned into one line.

Credentials, region and endpoint come from boto3's own chain (environment, `AWS_PROFILE`/--profile,
config files, instance role; `AWS_ENDPOINT_URL[_S3]` or --endpoint-url for S3-compatible stores).
Throttling (SlowDown, 503) and dropped connections are retried by botocore's retry modes;
`AWS_RETRY_MODE` and `AWS_MAX_ATTEMPTS` override our defaults (adaptive, 8 attempts).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from mltrain.startup import heavy_imports
from mltrain.storage.url import StorageError

DEFAULT_MAX_ATTEMPTS = 8
T = TypeVar("T")


@dataclass(frozen=True)
class S3Options:
    """How to reach S3; every field None means "whatever boto3 finds"."""

    endpoint_url: str | None = None
    profile: str | None = None
    region: str | None = None
    max_pool_connections: int = 32


def make_client(opts: S3Options | None = None, validate_responses: bool = True, sign_payload: bool = True) -> Any:
    """A thread-safe boto3 S3 client with retries sized for multi-GB parallel transfers.

    `validate_responses=False` stops botocore hashing downloaded bodies against the stored checksum:
    for callers that hash every byte against the manifest themselves (one hash pass, not two).
    `sign_payload=False` stops botocore hashing every request body for the SigV4 signature, which it
    does over plain http (over https it does not): for uploads that send the checksum of their own
    read in a signed header, which S3 checks the body against."""
    with heavy_imports():  # boto3 and the S3 service model it loads live until exit
        import boto3
        from botocore.config import Config
        from botocore.exceptions import BotoCoreError

    opts = opts or S3Options()
    try:
        session = boto3.session.Session(profile_name=opts.profile, region_name=opts.region)
        config = Config(
            retries={
                "mode": os.environ.get("AWS_RETRY_MODE", "adaptive"),
                "max_attempts": int(os.environ.get("AWS_MAX_ATTEMPTS", DEFAULT_MAX_ATTEMPTS)),
            },
            max_pool_connections=opts.max_pool_connections,
            connect_timeout=10,
            read_timeout=120,
            tcp_keepalive=True,
            response_checksum_validation="when_supported" if validate_responses else "when_required",
            s3=None if sign_payload else {"payload_signing_enabled": False},
        )
        with heavy_imports():
            return session.client("s3", endpoint_url=opts.endpoint_url, config=config)
    except BotoCoreError as e:  # ProfileNotFound, bad region, ...
        raise StorageError(f"cannot set up the S3 client: {e}") from None
    except ValueError as e:  # botocore's "Invalid endpoint: notaurl" (from --endpoint-url or AWS_ENDPOINT_URL)
        endpoint = opts.endpoint_url or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint and "endpoint" in str(e).lower():
            raise StorageError(
                f"{endpoint!r} is not an endpoint URL (expected e.g. https://s3.example.com:9000); "
                "check --endpoint-url / AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3"
            ) from None
        raise StorageError(f"cannot set up the S3 client: {e}") from None


_CODES = {
    "NoSuchBucket": "bucket does not exist",
    "InvalidAccessKeyId": "wrong credentials: the AWS access key id is not known to this endpoint",
    "SignatureDoesNotMatch": "wrong credentials: the secret key does not match the access key id",
    "ExpiredToken": "the AWS session token has expired; refresh your credentials",
    "AccessDenied": "access denied (check the credentials' IAM permissions and the bucket policy)",
    "403": "access denied (wrong credentials, or no permission for this bucket)",
    "404": "not found",
}


def describe(e: BaseException, where: str) -> str:
    """One line for a botocore/s3transfer failure, naming `where` (a URL or path)."""
    from botocore.exceptions import (
        ClientError,
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        ParamValidationError,
        PartialCredentialsError,
    )

    if isinstance(e, ClientError):
        err = e.response.get("Error", {})
        code = str(err.get("Code", ""))
        reason = _CODES.get(code) or f"{code}: {err.get('Message', '')}".strip(": ")
        return f"{where}: {reason}"
    if isinstance(e, (EndpointConnectionError, ConnectTimeoutError)):
        return f"{where}: cannot reach the S3 endpoint ({e}); check --endpoint-url / AWS_ENDPOINT_URL and the network"
    if isinstance(e, (NoCredentialsError, PartialCredentialsError)):
        return (
            f"{where}: no AWS credentials found (set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, "
            "or run with an instance role)"
        )
    if isinstance(e, ParamValidationError):  # botocore's report, with its regexes: the first clause only
        lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()] or [str(e)]
        first = lines[0].split(": ", 1)[0] if "regex" in lines[0] else lines[0]
        return f"{where}: invalid request: {first[:160]}"
    return f"{where}: {type(e).__name__}: {e}"


def storage_error(e: BaseException, where: str) -> StorageError:
    return StorageError(describe(e, where))


def is_not_found(e: BaseException) -> bool:
    from botocore.exceptions import ClientError

    if not isinstance(e, ClientError):
        return False
    code = str(e.response.get("Error", {}).get("Code", ""))
    return code in ("404", "NoSuchKey", "NotFound")


def unless_missing(request: Callable[[], T], where: str) -> T | None:
    """`request()`'s result, or None when S3 says the object is not there; any other failure is a
    StorageError naming `where`."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return request()
    except ClientError as e:
        if is_not_found(e):
            return None
        raise storage_error(e, where) from None
    except BotoCoreError as e:
        raise storage_error(e, where) from None


def check_bucket(client: Any, bucket: str) -> None:
    """Fail early with one clear line when the bucket is missing, forbidden or unreachable."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchBucket", "NotFound"):
            raise StorageError(f"s3://{bucket}: bucket does not exist (create it with `mltrain storage init`)")
        raise storage_error(e, f"s3://{bucket}") from None
    except BotoCoreError as e:
        raise storage_error(e, f"s3://{bucket}") from None
