"""The checksum S3 stores, computed locally: single PUT, composite multipart, part-size rules."""

from __future__ import annotations

import base64
import hashlib

import pytest

from mltrain.storage.digest import digest_file, part_size_for, same_checksum, stored_checksum
from mltrain.storage.url import StorageError, parse_s3_url


def test_single_put_checksum_is_base64_sha256(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"hello" * 1000)
    d = digest_file(p, 0)
    assert d.sha256 == hashlib.sha256(b"hello" * 1000).hexdigest()
    assert d.s3_checksum == "SHA256:" + base64.b64encode(hashlib.sha256(b"hello" * 1000).digest()).decode()


def test_multipart_checksum_is_sha256_of_part_digests(tmp_path):
    data = bytes(range(256)) * 4099  # 1,049,344 bytes: 3 parts of 400,000 (last one short)
    p = tmp_path / "f"
    p.write_bytes(data)
    parts = [data[i : i + 400_000] for i in range(0, len(data), 400_000)]
    composite = hashlib.sha256(b"".join(hashlib.sha256(x).digest() for x in parts)).digest()
    d = digest_file(p, 400_000)
    assert d.s3_checksum == f"SHA256:{base64.b64encode(composite).decode()}-3"
    assert d.sha256 == hashlib.sha256(data).hexdigest() and d.size == len(data)


def test_exact_multiple_of_part_size_has_no_empty_last_part(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"x" * 800_000)
    assert digest_file(p, 400_000).s3_checksum.endswith("-2")


def test_same_checksum_ignores_part_count_suffix_only():
    assert same_checksum("SHA256:abc=-3", "SHA256:abc=")
    assert not same_checksum("SHA256:abc=", "SHA256:abd=")
    assert not same_checksum("CRC32:abc=", "SHA256:abc=")
    assert not same_checksum(None, "SHA256:abc=")
    assert stored_checksum({"ChecksumSHA256": "v"}) == "SHA256:v"
    assert stored_checksum({"ChecksumCRC32": "c"}) == "CRC32:c"
    assert stored_checksum({}) is None


def test_part_size_follows_s3transfer():
    assert part_size_for(10, threshold=100, chunk=50) == 0
    mib = 1 << 20
    assert part_size_for(100 * mib, threshold=16 * mib, chunk=16 * mib) == 16 * mib
    # more than 10,000 parts: s3transfer doubles the part size, and so must the manifest
    assert part_size_for(200_000 * mib, threshold=16 * mib, chunk=8 * mib) == 32 * mib


def test_parse_s3_url():
    u = parse_s3_url("s3://bkt/a/b/")
    assert (u.bucket, u.prefix, u.key("x"), u.rel("a/b/x"), u.list_prefix) == ("bkt", "a/b", "a/b/x", "x", "a/b/")
    assert parse_s3_url("s3://bkt").key("x") == "x"
    for bad in ("bkt/a", "s3://", "s3:///a"):
        with pytest.raises(StorageError):
            parse_s3_url(bad)


def test_crc64nvme_is_the_full_object_crc_whatever_the_part_size(tmp_path):
    crc = pytest.importorskip("awscrt.checksums")
    data = bytes(range(256)) * 5000
    p = tmp_path / "f"
    p.write_bytes(data)
    want = "CRC64NVME:" + base64.b64encode(crc.crc64nvme(data).to_bytes(8, "big")).decode()
    assert digest_file(p, 0, "CRC64NVME").s3_checksum == want
    assert digest_file(p, 400_000, "CRC64NVME").s3_checksum == want
    assert digest_file(p, 0, "CRC64NVME").sha256 == hashlib.sha256(data).hexdigest()


def test_local_checksum_matches_what_s3_stores_for_one_put(tmp_path):
    import zlib

    from mltrain.storage.digest import crt_available, local_checksum

    p = tmp_path / "f"
    p.write_bytes(b"abc" * 5000)
    assert local_checksum(p, "SHA256") == "SHA256:" + base64.b64encode(hashlib.sha256(b"abc" * 5000).digest()).decode()
    crc = zlib.crc32(b"abc" * 5000).to_bytes(4, "big")
    assert local_checksum(p, "CRC32") == "CRC32:" + base64.b64encode(crc).decode()
    assert local_checksum(p, "SHA1") is None and local_checksum(p, "CRC32C") is None
    if crt_available():
        assert local_checksum(p, "CRC64NVME") == digest_file(p, 0, "CRC64NVME").s3_checksum


def test_whole_object_checksum_only_where_one_piece_covers_the_bytes():
    from mltrain.storage.transfer import whole_object_checksum

    assert whole_object_checksum({"ChecksumSHA256": "v", "ETag": '"abc"'}) == "SHA256:v"
    assert whole_object_checksum({"ChecksumSHA256": "v", "ETag": '"abc-3"'}) is None  # multipart composite
    assert whole_object_checksum({"ChecksumSHA256": "v-3", "ETag": '"abc"'}) is None
    assert whole_object_checksum({"ChecksumCRC32": "c", "ETag": '"abc-3"', "ChecksumType": "FULL_OBJECT"}) == "CRC32:c"
    assert whole_object_checksum({"ChecksumCRC64NVME": "n", "ETag": '"abc-3"'}) == "CRC64NVME:n"
    assert whole_object_checksum({"ChecksumCRC32": "c"}) == "CRC32:c"
    assert whole_object_checksum({"ETag": '"abc"'}) is None


def test_bucket_names_botocore_refuses_are_one_line():
    for bad in ("Bad Bucket", "b!", "a" * 256, "é"):
        with pytest.raises(StorageError) as e:
            parse_s3_url(f"s3://{bad}/p")
        assert f"{bad!r} is not a valid bucket name" in str(e.value) and "regex" not in str(e.value)
        assert "\n" not in str(e.value)
    for ok in ("my-bucket", "My_Legacy.Bucket", "a" * 255, "arn:aws:s3:us-east-1:123456789012:accesspoint:ap"):
        assert parse_s3_url(f"s3://{ok}/p").bucket == ok


def test_botocore_parameter_errors_become_one_short_line():
    from botocore.exceptions import ParamValidationError

    from mltrain.storage.client import describe

    e = ParamValidationError(report='Invalid bucket name "B B": Bucket name must match the regex "^[a-z]+$" or be...')
    assert describe(e, "s3://B B/k") == 's3://B B/k: invalid request: Invalid bucket name "B B"'
    e = ParamValidationError(report="Invalid length for parameter Key, value: 0, valid min length: 1")
    assert (
        describe(e, "s3://b/")
        == "s3://b/: invalid request: Invalid length for parameter Key, value: 0, valid min length: 1"
    )


def test_an_endpoint_that_is_not_a_url_is_one_line(monkeypatch):
    from mltrain.storage.client import S3Options, make_client

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "x")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "x")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    with pytest.raises(StorageError, match=r"^'notaurl' is not an endpoint URL .*--endpoint-url / AWS_ENDPOINT_URL"):
        make_client(S3Options(endpoint_url="notaurl"))
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "also not")
    with pytest.raises(StorageError, match=r"^'also not' is not an endpoint URL"):
        make_client()
