"""Which transfer engine moves the bytes: the AWS Common Runtime's S3 client (s3transfer's CRT
manager, what makes AWS CLI v2 fast) when awscrt is installed, else s3transfer's classic threads.

The CRT client splits, sends and receives in native threads (no GIL, one process-wide connection
pool), so the Python side only hashes; the classic manager runs every 256 KiB read and write
through Python. We use the CRT one only where it does what the classic path does for us:

- credentials that botocore can resolve (the CRT signs with a snapshot of them);
- an upload with a full-object checksum (CRC64NVME) that we computed ourselves, so the CRT sends
  our value and S3 refuses an object whose bytes changed after we hashed them. A SHA256 multipart
  checksum is a composite over parts whose size the CRT picks itself, so it stays on the classic
  path, where the manifest's part size is the one used.

`MLTRAIN_S3_ENGINE` (auto | crt | classic) overrides the choice; "crt" where the CRT cannot be used
falls back to classic and says why. The summary and `--json` name the engine that ran.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mltrain.storage.url import StorageError

CRT = "crt"
CLASSIC = "classic"
ENGINE_ENV = "MLTRAIN_S3_ENGINE"
_AWS_HOSTS = (".amazonaws.com", ".amazonaws.com.cn")


@dataclass(frozen=True)
class Engine:
    name: str  # CRT or CLASSIC
    reason: str  # why this one ("" when it is the one asked for and nothing stood in the way)


def requested_engine(value: str | None = None) -> str:
    """auto | crt | classic, from `value` or MLTRAIN_S3_ENGINE; anything else is one clear line."""
    v = (value or os.environ.get(ENGINE_ENV) or "auto").strip().lower()
    if v not in ("auto", CRT, CLASSIC):
        raise StorageError(f"{ENGINE_ENV}={v}: expected auto, crt or classic")
    return v


def crt_importable() -> str | None:
    """None when the CRT transfer manager can be built here, else why not."""
    try:
        import awscrt.s3  # noqa: F401
        import s3transfer.crt  # noqa: F401
    except ImportError as e:
        return f"awscrt not installed ({e.name or e})"
    return None


def validates_responses(client: Any) -> bool:
    """Whether `client` hashes downloaded bodies against the stored checksum (botocore's default)."""
    return getattr(client.meta.config, "response_checksum_validation", None) != "when_required"


def choose_engine(requested: str, algorithm: str, direction: str, client: Any = None) -> Engine:
    """The engine for one transfer; `algorithm` is the checksum the upload sends."""
    from mltrain.storage.digest import CRC64NVME

    if requested == CLASSIC:
        return Engine(CLASSIC, f"{ENGINE_ENV}=classic")
    why = crt_importable()
    if why is None and direction == "upload" and algorithm != CRC64NVME:
        why = f"{algorithm} multipart checksums depend on the part size the CRT would choose"
    if why is None and direction == "download" and client is not None and validates_responses(client):
        # the CRT starts every GET with a ranged request, for which S3 returns no checksum to validate
        why = "the client validates each body against S3's stored checksum, which the CRT skips on ranged GETs"
    if why is None and requested == "auto" and client is not None and is_loopback(client):
        # the CRT plans its connections for a network link (a 10 Gb/s target); against a server on this
        # machine it was measured slower than the classic threads (docs/storage.md, Benchmark)
        why = "loopback endpoint: the classic engine measured faster against a server on this machine"
    if why is not None:
        return Engine(CLASSIC, why if requested == CRT else f"auto: {why}")
    return Engine(CRT, "")


def is_loopback(client: Any) -> bool:
    """The client talks to a server on this machine (a local S3-compatible store)."""
    url = str(getattr(client.meta, "endpoint_url", "") or "")
    host = url.split("://", 1)[-1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    return host in ("localhost", "::1") or host.startswith("127.")


def _endpoint(client: Any) -> str | None:
    """The endpoint URL to hand the CRT's request serializer: only a non-AWS one (moto, MinIO, ...);
    for AWS itself botocore resolves the regional endpoint the usual way."""
    url = str(client.meta.endpoint_url or "")
    host = url.split("://", 1)[-1].split("/", 1)[0].split(":", 1)[0]
    return None if not url or host.endswith(_AWS_HOSTS) else url


def crt_manager(client: Any, concurrency: int, part_size: int, threshold: int) -> Any:
    """A CRTTransferManager that reaches the same endpoint, region and credentials as `client`."""
    import botocore.session
    from boto3.s3.transfer import TransferConfig
    from s3transfer.crt import (
        BotocoreCRTCredentialsWrapper,
        BotocoreCRTRequestSerializer,
        CRTTransferManager,
        create_s3_crt_client,
    )

    creds = client._request_signer._credentials  # the very credentials the client signs with
    if creds is None:
        raise StorageError("no AWS credentials for the CRT client")
    region = client.meta.region_name or "us-east-1"
    endpoint = _endpoint(client)
    crt_client = create_s3_crt_client(
        region,
        crt_credentials_provider=BotocoreCRTCredentialsWrapper(creds).to_crt_credentials_provider(),
        use_ssl=not (endpoint or "").startswith("http://"),
        part_size=part_size,
    )
    kwargs: dict[str, Any] = {"region_name": region}
    if endpoint:
        kwargs["endpoint_url"] = endpoint
    serializer = BotocoreCRTRequestSerializer(botocore.session.Session(), client_kwargs=kwargs)
    config = TransferConfig(multipart_threshold=threshold, multipart_chunksize=part_size, max_concurrency=concurrency)
    tm = CRTTransferManager(crt_client, serializer, config=config)
    if not validates_responses(client):  # the caller hashes every body itself: the client's choice holds here too
        tm._s3_args_creator = _args_creator(serializer, tm._osutil, config)
    return tm


def _args_creator(serializer: Any, osutil: Any, config: Any) -> Any:
    """s3transfer's CRT request builder with the GET body check off (it always asks for it)."""
    import awscrt.s3
    from s3transfer.crt import S3ClientArgsCreator

    class NoResponseValidation(S3ClientArgsCreator):
        def _get_make_request_args_get_object(self, **kwargs: Any) -> dict[str, Any]:
            args = super()._get_make_request_args_get_object(**kwargs)
            args["checksum_config"] = awscrt.s3.S3ChecksumConfig(validate_response=False)
            return args

    return NoResponseValidation(serializer, osutil, config)


def open_manager(engine: Engine, client: Any, settings: Any) -> tuple[Any, Engine]:
    """The transfer manager for `engine`; a CRT one that cannot be set up falls back to classic, saying why."""
    from s3transfer.manager import TransferManager

    if engine.name == CRT:
        try:
            return crt_manager(client, settings.concurrency, settings.part_size, settings.threshold), engine
        except Exception as e:  # noqa: BLE001 - any CRT set-up failure means: use the classic engine
            engine = Engine(CLASSIC, f"CRT client unavailable ({type(e).__name__}: {e})")
    return TransferManager(client, settings.transfer_config()), engine


def crt_error_text(e: BaseException) -> str | None:
    """One line for an awscrt failure (it is no botocore error), None for anything else."""
    try:
        from awscrt.exceptions import AwsCrtError
    except ImportError:
        return None
    if isinstance(e, AwsCrtError):
        return f"{e.name}: {e.message}"
    return None


def is_crt_checksum_mismatch(e: BaseException) -> bool:
    return "CHECKSUM_MISMATCH" in (crt_error_text(e) or "")
