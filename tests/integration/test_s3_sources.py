"""`data.sources: s3://bucket/prefix/*.jsonl`, streamed from moto's S3 server."""

from __future__ import annotations

import json

import pytest

from mltrain.config import DataConfig
from mltrain.data.sources import read_corpus
from mltrain.errors import DataError, MltrainError


def _corpus(tmp_path):
    local = tmp_path / "corpus"
    local.mkdir()
    for i in range(3):
        lines = [json.dumps({"text": f"doc {i}-{j} " + "word " * (j * 20)}) for j in range(200)]
        lines.insert(5, "{not json")  # skipped and counted, as for local files; files span several 1 MiB reads
        (local / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    (local / "notes.txt").write_text("a plain text document")
    return local


def test_s3_jsonl_glob_streams_the_same_corpus_as_local_files(tmp_path, s3_env, s3, bucket):
    local = _corpus(tmp_path)
    for p in sorted(local.iterdir()):
        s3.upload_file(str(p), bucket, f"raw/v1/{p.name}")
    s3.put_object(Bucket=bucket, Key="raw/v1x/part-9.jsonl", Body=b'{"text": "not under the prefix"}\n')

    want = read_corpus(DataConfig(sources=[str(local / "*.jsonl")]))
    got = read_corpus(DataConfig(sources=[f"s3://{bucket}/raw/v1/*.jsonl"]))
    assert got.docs == want.docs and len(got.docs) == 600
    assert got.fingerprint == want.fingerprint
    assert got.stats.files == 3 and got.stats.skipped_reasons["invalid-json"] == 3
    assert any(e.startswith(f"s3://{bucket}/raw/v1/part-0.jsonl:6") for e in got.stats.examples)

    whole = read_corpus(DataConfig(sources=[f"s3://{bucket}/raw/v1/"]))  # a prefix: every known suffix
    assert whole.stats.files == 4 and whole.docs[0] == "a plain text document"  # key order


def test_s3_source_errors_name_the_entry(tmp_path, s3_env, bucket):
    with pytest.raises(DataError, match=r"s3://.*/nothing/\*\.jsonl'?: matches no objects"):
        read_corpus(DataConfig(sources=[f"s3://{bucket}/nothing/*.jsonl"]))
    with pytest.raises(MltrainError, match="no-such-bucket-q.*does not exist"):
        read_corpus(DataConfig(sources=["s3://no-such-bucket-q/x/*.jsonl"]))


def test_s3_source_bad_bucket_name_and_endpoint_are_one_line(tmp_path, s3_env, monkeypatch):
    from mltrain.storage import source

    with pytest.raises(MltrainError) as e:
        read_corpus(DataConfig(sources=["s3://Bad_Bucket!/x/*.jsonl"]))
    assert "'Bad_Bucket!' is not a valid bucket name" in str(e.value) and "regex" not in str(e.value)
    monkeypatch.setattr(source._local, "client", None, raising=False)  # no client cached from another test
    monkeypatch.setenv("AWS_ENDPOINT_URL", "notaurl")
    with pytest.raises(MltrainError, match="'notaurl' is not an endpoint URL"):
        read_corpus(DataConfig(sources=["s3://some-bucket/x/*.jsonl"]))
