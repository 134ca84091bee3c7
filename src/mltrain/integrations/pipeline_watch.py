"""`mltrain pipeline watch s3://bucket/prefix/ --run PIPELINE.yaml`: the S3 trigger for teams without Airflow.

A dataset version is a prefix under the watched one that holds a marker object (`_SUCCESS`, or the
manifest `data upload` writes last). New versions are found by listing (polling) or from S3 event
notifications delivered to an SQS queue. Each version is started at most once, across restarts of the
watcher and across two watchers on one state: before starting, the watcher creates a claim file with
O_EXCL (only one creator wins), then records the start in a JSON state file written atomically. A version
whose claim exists is never started again; one claimed but not recorded as started (the watcher died in
between) is reported, not restarted: `mltrain pipeline run URI` starts it by hand.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

from mltrain.fsutil import atomic_write
from mltrain.storage.manifest import MANIFEST_NAME

Log = Callable[[str], None]


def version_of(bucket: str, key: str, markers: Iterable[str]) -> str | None:
    """s3://bucket/<dir>/ when `key` is a marker object in <dir>, else None."""
    d, _, name = key.rpartition("/")
    if name not in markers:
        return None
    return f"s3://{bucket}/{d}/" if d else f"s3://{bucket}/"


class WatchState:
    """The versions this watcher started: claims (one file each, created exclusively) and a JSON record."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.claims = self.path.with_name(self.path.name + ".claims")

    def load(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {"versions": {}}
        except (OSError, ValueError) as e:
            from mltrain.integrations.pipeline_runner import PipelineError

            raise PipelineError(f"{self.path}: unreadable watch state ({e}); move it away to start over") from None
        return data if isinstance(data.get("versions"), dict) else {"versions": {}}

    def _claim_file(self, uri: str) -> Path:
        return self.claims / (hashlib.sha256(uri.encode()).hexdigest()[:32] + ".claim")

    def claimed(self, uri: str) -> bool:
        return self._claim_file(uri).exists()

    def claim(self, uri: str) -> bool:
        """True for the one caller that claims `uri` first (ever); False when it was claimed before."""
        self.claims.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self._claim_file(uri), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps({"uri": uri, "host": socket.gethostname(), "pid": os.getpid(), "time": time.time()}))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def record(self, uri: str, state: str, **extra: Any) -> None:
        data = self.load()
        data["versions"][uri] = {"state": state, "time": time.time(), **extra}
        atomic_write(self.path, json.dumps(data, indent=1, sort_keys=True) + "\n")


def list_versions(client: Any, root: str, markers: Iterable[str]) -> list[str]:
    """Every version under `root` (s3://bucket/prefix/), oldest marker first."""
    from mltrain.storage.url import parse_s3_url

    url = parse_s3_url(root)
    found: dict[str, Any] = {}
    pager = client.get_paginator("list_objects_v2")
    for page in pager.paginate(Bucket=url.bucket, Prefix=url.prefix + "/" if url.prefix else ""):
        for obj in page.get("Contents", []):
            v = version_of(url.bucket, obj["Key"], markers)
            if v is not None and (v not in found or obj["LastModified"] < found[v]):
                found[v] = obj["LastModified"]
    return [v for v, _ in sorted(found.items(), key=lambda kv: (kv[1], kv[0]))]


def sqs_versions(sqs: Any, queue_url: str, root: str, markers: Iterable[str], wait_s: int = 20) -> list[str]:
    """Versions announced by S3 event notifications on an SQS queue (messages deleted once read: the
    claim, not the queue, is what keeps a version from starting twice)."""
    from mltrain.storage.url import parse_s3_url

    url = parse_s3_url(root)
    resp = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=wait_s)
    out: list[str] = []
    for msg in resp.get("Messages", []):
        try:
            body = json.loads(msg["Body"])
            if "Message" in body and isinstance(body["Message"], str):  # delivered through SNS
                body = json.loads(body["Message"])
        except ValueError:
            body = {}
        for rec in body.get("Records", []) if isinstance(body, dict) else []:
            s3 = rec.get("s3", {})
            bucket, key = s3.get("bucket", {}).get("name"), unquote_plus(s3.get("object", {}).get("key", ""))
            if bucket != url.bucket or not key.startswith(url.prefix):
                continue
            v = version_of(bucket, key, markers)
            if v is not None and v not in out:
                out.append(v)
        sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=msg["ReceiptHandle"])
    return out


def spawn_run(pipeline_yaml: str, log_dir: Path) -> Callable[[str], None]:
    """The default starter: `mltrain pipeline run URI --run PIPELINE.yaml` detached, logging to log_dir."""

    def start(uri: str) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        name = hashlib.sha256(uri.encode()).hexdigest()[:12]
        with open(log_dir / f"{name}.log", "ab") as out:
            subprocess.Popen(
                [sys.executable, "-m", "mltrain", "pipeline", "run", uri, "--run", pipeline_yaml],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    return start


def watch(
    root: str,
    start: Callable[[str], None],
    state: WatchState,
    *,
    client: Any = None,
    sqs: Any = None,
    queue_url: str | None = None,
    markers: Iterable[str] = ("_SUCCESS", MANIFEST_NAME),
    interval_s: float = 60.0,
    sqs_wait_s: int = 20,
    once: bool = False,
    skip_existing: bool = False,
    log: Log = print,
    sleep: Callable[[float], None] = time.sleep,
) -> list[str]:
    """Start every new version once; returns the versions this call started (for --once and the tests)."""
    markers = tuple(markers)
    root = root if root.endswith("/") else root + "/"
    started: list[str] = []
    for uri, rec in sorted(state.load()["versions"].items()):
        if rec.get("state") == "claimed":
            log(f"{uri}: claimed by an earlier watcher that stopped before starting it; not started again "
                f"(start it with `mltrain pipeline run {uri}`)")  # fmt: skip
    if skip_existing:
        for uri in list_versions(client, root, markers):
            if state.claim(uri):
                state.record(uri, "skipped")
                log(f"{uri}: present before the watch began; skipped (--skip-existing)")
    while True:
        found = (
            sqs_versions(sqs, queue_url, root, markers, sqs_wait_s)
            if queue_url
            else list_versions(client, root, markers)
        )
        for uri in found:
            if not state.claim(uri):
                continue
            state.record(uri, "claimed")
            log(f"{uri}: new dataset version; starting the pipeline")
            try:
                start(uri)
            except Exception as e:  # the version stays claimed: a broken start is not retried in a loop
                state.record(uri, "start_failed", error=str(e)[:500])
                log(f"{uri}: the start failed: {e}")
                continue
            state.record(uri, "started")
            started.append(uri)
        if once:
            return started
        sleep(interval_s)


__all__ = ["WatchState", "list_versions", "sqs_versions", "spawn_run", "version_of", "watch"]
