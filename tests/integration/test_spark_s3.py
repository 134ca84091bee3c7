"""curate with s3:// sources (jsonl, parquet, txt) and an s3:// output, against the local S3 API server:
executors read the objects with boto3, the driver uploads the output (parts, report, manifest last)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from moto_fixture import run_cli
from spark_fixture import spark  # noqa: F401

from mltrain.config import CurateConfig, NearDedupConfig

pytestmark = pytest.mark.spark


def _docs(n: int, tag: str) -> list[str]:
    return [f"Document {tag} {i} tells a short story about item {i * 7}." for i in range(n)]


def test_s3_in_and_out(tmp_path, spark, s3_env, s3, bucket):  # noqa: F811
    from mltrain.data.curate.pipeline import curate

    jsonl = "\n".join(json.dumps({"text": t}) for t in _docs(20, "j") + _docs(3, "j")[:3]) + "\n"
    s3.put_object(Bucket=bucket, Key="raw/a.jsonl", Body=jsonl.encode())
    buf = pa.BufferOutputStream()
    pq.write_table(pa.table({"text": _docs(10, "p")}), buf)
    s3.put_object(Bucket=bucket, Key="raw/b.parquet", Body=buf.getvalue().to_pybytes())
    s3.put_object(Bucket=bucket, Key="raw/c.txt", Body=b"A plain text object, one document.")
    cfg = CurateConfig(
        sources=[f"s3://{bucket}/raw/"],
        output=f"s3://{bucket}/curated",
        work_dir=str(tmp_path / "work"),
        near_dedup=NearDedupConfig(enabled=False),  # this test is about the I/O: the fewest steps
        quality=None,
    )
    report = curate(cfg)
    assert report["files"] == 3 and report["steps"][0]["docs_out"] == 34
    assert report["output"]["docs"] == 31  # the three repeated jsonl lines are exact duplicates
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="curated/")["Contents"])
    assert keys == ["curated/curate_manifest.json", "curated/curate_report.json", "curated/part-00000.parquet"]
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="curated/curate_manifest.json")["Body"].read())
    body = s3.get_object(Bucket=bucket, Key="curated/part-00000.parquet")["Body"].read()
    import hashlib

    assert manifest["files"][0]["sha256"] == hashlib.sha256(body).hexdigest() and manifest["docs"] == 31
    texts = pq.read_table(pa.BufferReader(body)).column("text").to_pylist()
    assert texts[0] == _docs(1, "j")[0] and texts[-1] == "A plain text object, one document."


def test_s3_without_credentials_is_one_line(tmp_path, s3_env, bucket, monkeypatch):
    cfg = {
        "name": "c",
        "model": {"preset": "tiny"},
        "data": {"curate": {"sources": [f"s3://{bucket}/raw/"], "output": str(tmp_path / "out")}},
    }
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    from mltrain.storage import source

    monkeypatch.setattr(source._local, "client", None, raising=False)
    env = {k: v for k, v in s3_env.items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    res = run_cli(env, "data", "curate", str(path))
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 1 and len(lines) == 1 and "no AWS credentials found" in lines[0], res.stderr
