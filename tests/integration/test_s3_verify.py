"""`verify_prefix` on moto's real S3 server, called in this process: exactly which objects are missing,
extra or mismatched, with which reason, and what was counted."""

from __future__ import annotations

import base64
import hashlib

import pytest

from mltrain.storage.client import S3Options, make_client
from mltrain.storage.transfer import TransferSettings, upload
from mltrain.storage.url import StorageError, parse_s3_url
from mltrain.storage.verify import verify_prefix

SHA = TransferSettings(checksum="sha256", concurrency=4, hash_workers=2)
DATA = {"a.bin": b"a" * 1000, "d/b.bin": b"b" * 2000, "d/e/c.bin": b"c" * 3000}


@pytest.fixture
def client(s3_env):
    return make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), validate_responses=False)


@pytest.fixture
def uploaded(tmp_path, client, bucket):
    src = tmp_path / "src"
    for rel, data in DATA.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    url = parse_s3_url(f"s3://{bucket}/v")
    upload(src, url, client, SHA, progress=False)
    return url


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def test_a_good_prefix_counts_every_object_and_byte(client, uploaded, s3, bucket):
    s3.put_object(Bucket=bucket, Key="v2/x.bin", Body=b"beside, not under, the prefix")
    for deep in (False, True):
        rep = verify_prefix(client, uploaded, deep=deep, progress=False)
        assert rep.ok and (rep.checked, rep.bytes, rep.deep) == (3, 6000, deep)
        assert (rep.missing, rep.extra, rep.mismatched) == ([], [], [])
        assert rep.as_dict() == {
            "url": str(uploaded), "checked": 3, "bytes": 6000, "deep": deep,
            "missing": [], "extra": [], "mismatched": [], "ok": True,
        }  # fmt: skip


def test_each_problem_is_classified_with_its_reason(client, uploaded, s3, bucket):
    s3.put_object(Bucket=bucket, Key="v/a.bin", Body=b"a" * 999, ChecksumAlgorithm="SHA256")  # other size
    s3.put_object(Bucket=bucket, Key="v/d/b.bin", Body=b"B" * 2000, ChecksumAlgorithm="SHA256")  # other bytes
    s3.delete_object(Bucket=bucket, Key="v/d/e/c.bin")
    s3.put_object(Bucket=bucket, Key="v/z.bin", Body=b"z")
    s3.put_object(Bucket=bucket, Key="v/d/y.bin", Body=b"y")
    rep = verify_prefix(client, uploaded, progress=False)
    assert not rep.ok
    assert rep.missing == ["d/e/c.bin"] and rep.extra == ["d/y.bin", "z.bin"]
    assert rep.mismatched == [
        "a.bin: 999 bytes, manifest says 1000",
        f"d/b.bin: S3 checksum SHA256:{b64sha(b'B' * 2000)}, manifest expects SHA256:{b64sha(b'b' * 2000)}",
    ]
    assert (rep.checked, rep.bytes) == (2, 3000)


def test_an_object_stored_with_another_checksum_algorithm_is_a_mismatch(client, uploaded, s3, bucket):
    s3.put_object(Bucket=bucket, Key="v/a.bin", Body=b"a" * 1000, ChecksumAlgorithm="CRC32")
    rep = verify_prefix(client, uploaded, progress=False)
    assert rep.mismatched and rep.mismatched[0].startswith("a.bin: S3 checksum CRC32:")


def test_only_deep_finds_bytes_behind_a_forged_checksum(client, uploaded, s3, bucket):
    good = b64sha(b"a" * 1000)
    s3.put_object(Bucket=bucket, Key="v/a.bin", Body=b"x" * 1000, ChecksumAlgorithm="SHA256", ChecksumSHA256=good)
    assert verify_prefix(client, uploaded, progress=False).ok
    rep = verify_prefix(client, uploaded, deep=True, progress=False)
    want, got = hashlib.sha256(b"a" * 1000).hexdigest(), hashlib.sha256(b"x" * 1000).hexdigest()
    assert rep.mismatched == [f"a.bin: content sha256 {got[:16]}..., manifest says {want[:16]}..."]
    assert rep.checked == 3 and rep.missing == rep.extra == []


def test_no_manifest_is_an_error_not_an_empty_report(client, s3, bucket):
    s3.put_object(Bucket=bucket, Key="raw/x", Body=b"x")
    with pytest.raises(StorageError, match=rf"^s3://{bucket}/raw: no \.mltrain-manifest\.json \(upload with"):
        verify_prefix(client, parse_s3_url(f"s3://{bucket}/raw"), progress=False)
