"""`mltrain storage init CLUSTER.yaml`: the buckets a cluster spec names, created and configured
idempotently in the cluster's region.

- data bucket (`aws.fsx.s3_import_path`): created if missing;
- checkpoint bucket (`aws.fsx.s3_export_path`, where FSx exports runs and checkpoints): versioning on,
  so an overwrite or a prune can be undone, and noncurrent versions expire after a while;
- both: a lifecycle rule that aborts incomplete multipart uploads after N days (a killed upload
  otherwise bills its parts forever).

Only rules with mltrain's own IDs are added or replaced; a bucket's other lifecycle rules are kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mltrain.storage.client import S3Options, make_client, storage_error
from mltrain.storage.url import StorageError, parse_s3_url

ABORT_RULE_ID = "mltrain-abort-incomplete-multipart"
NONCURRENT_RULE_ID = "mltrain-expire-noncurrent-versions"
NONCURRENT_DAYS = 30


def buckets_of(spec: Any) -> dict[str, set[str]]:
    """bucket -> roles ("data", "checkpoints") named by the cluster spec."""
    fsx = spec.aws.fsx if spec.aws else None
    out: dict[str, set[str]] = {}
    for url, role in ((fsx and fsx.s3_import_path, "data"), (fsx and fsx.s3_export_path, "checkpoints")):
        if url:
            out.setdefault(parse_s3_url(url).bucket, set()).add(role)
    return out


def _ensure_bucket(client: Any, bucket: str, region: str) -> list[str]:
    from botocore.exceptions import ClientError

    try:
        client.head_bucket(Bucket=bucket)
    except ClientError as e:
        code = str(e.response.get("Error", {}).get("Code", ""))
        if code in ("403", "AccessDenied"):
            raise StorageError(f"s3://{bucket}: exists but is not accessible with these credentials (another account?)")
        if code not in ("404", "NoSuchBucket", "NotFound"):
            raise storage_error(e, f"s3://{bucket}") from None
        kwargs: dict[str, Any] = {"Bucket": bucket}
        if region != "us-east-1":  # us-east-1 rejects an explicit LocationConstraint
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
        try:
            client.create_bucket(**kwargs)
        except ClientError as e2:
            if e2.response.get("Error", {}).get("Code") != "BucketAlreadyOwnedByYou":
                raise storage_error(e2, f"s3://{bucket}") from None
        return [f"created in {region}"]
    where = client.get_bucket_location(Bucket=bucket).get("LocationConstraint") or "us-east-1"
    if where != region:
        return [f"exists (in {where}, not the cluster's {region}: cross-region traffic)"]
    return ["exists"]


def _ensure_versioning(client: Any, bucket: str) -> str:
    if client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled":
        return "versioning already on"
    client.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    return "versioning turned on"


def _ensure_lifecycle(client: Any, bucket: str, abort_days: int, versioned: bool) -> str:
    from botocore.exceptions import ClientError

    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as e:
        if e.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    want = [
        {
            "ID": ABORT_RULE_ID,
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": abort_days},
        }
    ]
    if versioned:
        want.append(
            {
                "ID": NONCURRENT_RULE_ID,
                "Status": "Enabled",
                "Filter": {"Prefix": ""},
                "NoncurrentVersionExpiration": {"NoncurrentDays": NONCURRENT_DAYS},
            }
        )
    ours = {r["ID"] for r in want}
    current = {r.get("ID"): r for r in rules if r.get("ID") in ours}
    if all(_same_rule(current.get(r["ID"]), r) for r in want):
        return "lifecycle rules already set"
    kept = [r for r in rules if r.get("ID") not in ours]
    client.put_bucket_lifecycle_configuration(Bucket=bucket, LifecycleConfiguration={"Rules": kept + want})
    return f"lifecycle: abort incomplete multipart uploads after {abort_days} day(s)" + (
        f", expire noncurrent versions after {NONCURRENT_DAYS} days" if versioned else ""
    )


def _same_rule(have: dict | None, want: dict) -> bool:
    if have is None:
        return False
    return all(have.get(k) == v for k, v in want.items() if k != "Filter") and (
        have.get("Filter", {}).get("Prefix", "") == "" and not have.get("Filter", {}).get("And")
    )


def init_storage(
    cluster_yaml: Path, endpoint_url: str | None = None, profile: str | None = None, abort_days: int = 7
) -> list[dict[str, Any]]:
    """Create/configure every bucket of the cluster spec; returns what was done per bucket."""
    from botocore.exceptions import BotoCoreError, ClientError

    from mltrain.cluster.spec import load_cluster_spec

    spec = load_cluster_spec(cluster_yaml)
    if spec.aws is None:
        raise StorageError(f"{cluster_yaml}: no aws: section, so no region and no buckets to create")
    wanted = buckets_of(spec)
    if not wanted:
        raise StorageError(
            f"{cluster_yaml}: aws.fsx.s3_import_path / s3_export_path: the spec names no S3 bucket to create"
        )
    region = spec.aws.region
    client = make_client(S3Options(endpoint_url=endpoint_url, profile=profile, region=region))
    out = []
    for bucket, roles in sorted(wanted.items()):
        try:
            actions = _ensure_bucket(client, bucket, region)
            versioned = "checkpoints" in roles
            if versioned:
                actions.append(_ensure_versioning(client, bucket))
            actions.append(_ensure_lifecycle(client, bucket, abort_days, versioned))
        except (BotoCoreError, ClientError) as e:
            raise storage_error(e, f"s3://{bucket}") from None
        out.append({"bucket": bucket, "role": "+".join(sorted(roles)), "region": region, "actions": actions})
    return out
