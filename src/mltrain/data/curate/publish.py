"""Put the committed output where curate.output says: a local dir, or s3:// uploaded with boto3 from the
driver (parts first, the report, the manifest last)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from mltrain.data.curate.manifest import MANIFEST_FILE, REPORT_FILE, build_manifest, dumps, write_local
from mltrain.data.curate.workdir import WorkDir
from mltrain.errors import DataError


def _stage(wd: WorkDir, src_dir: str, files: list[str], into: Path) -> None:
    for name in files:
        tmp = into / f".{name}.tmp"
        tmp.unlink(missing_ok=True)
        wd.copy_to_local(f"{src_dir}/{name}", str(tmp))
        os.replace(tmp, into / name)


def publish(
    wd: WorkDir,
    src_dir: str,
    files: list[str],
    output: str,
    report: dict[str, Any],
    docs: int,
    text_bytes: int,
    key: str,
) -> dict[str, Any]:
    """Copy the parts, write the report and the manifest; return the manifest."""
    if output.startswith("s3://"):
        staged = Path(tempfile.mkdtemp(prefix="mltrain-curate-"))
        try:
            _stage(wd, src_dir, files, staged)
            manifest = build_manifest(staged, files, docs, text_bytes, key)
            _upload(staged, files, output, report, manifest)
        finally:
            shutil.rmtree(staged, ignore_errors=True)
        return manifest
    out = Path(output)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until the new one is written
        for old in out.glob("part-*.parquet"):
            if old.name not in files:
                old.unlink()
        _stage(wd, src_dir, files, out)
    except OSError as e:
        raise DataError(f"curate.output {output}: cannot write: {e.strerror or e}") from None
    manifest = build_manifest(out, files, docs, text_bytes, key)
    write_local(out, REPORT_FILE, report)
    write_local(out, MANIFEST_FILE, manifest)
    return manifest


def _upload(staged: Path, files: list[str], output: str, report: dict, manifest: dict) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    from mltrain.storage.client import check_bucket, describe
    from mltrain.storage.source import _client
    from mltrain.storage.url import parse_s3_url

    url = parse_s3_url(output.rstrip("/") + "/")
    client = _client()
    check_bucket(client, url.bucket)
    try:
        for name in files:
            client.upload_file(str(staged / name), url.bucket, url.key(name))
        client.put_object(Bucket=url.bucket, Key=url.key(REPORT_FILE), Body=dumps(report).encode())
        client.put_object(Bucket=url.bucket, Key=url.key(MANIFEST_FILE), Body=dumps(manifest).encode())
    except (BotoCoreError, ClientError) as e:
        raise DataError(describe(e, output)) from None
