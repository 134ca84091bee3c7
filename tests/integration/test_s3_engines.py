"""Both transfer engines on moto's S3 server: the one that ran is named, uploads send the checksum of
our one read, and downloads are checked from the hashes taken while the bytes streamed in (a
download never reads a file back) and refuse bytes that differ from the manifest."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest

from mltrain.storage import transfer
from mltrain.storage.client import S3Options, make_client
from mltrain.storage.manifest import MANIFEST_NAME
from mltrain.storage.transfer import TransferSettings, download, upload
from mltrain.storage.url import StorageError, parse_s3_url

crt = pytest.importorskip("awscrt.checksums")
MiB = 1 << 20


@pytest.mark.parametrize("engine", ["crt", "classic"])
def test_round_trip_names_its_engine_and_verifies_in_one_pass(tmp_path, s3_env, s3, bucket, engine, monkeypatch):
    settings = TransferSettings(concurrency=4, part_size=5 * MiB, threshold=5 * MiB, engine=engine)
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    files = {"a.bin": b"a" * 1000, "d/big.bin": bytes(range(256)) * (7 * 4096 + 3), "empty": b""}
    for rel, data in files.items():
        (src / rel).write_bytes(data)
    url = parse_s3_url(f"s3://{bucket}/e-{engine}")
    up = upload(src, url, make_client(S3Options(s3_env["AWS_ENDPOINT_URL"])), settings, progress=False)
    assert (up.engine, up.transferred, up.verified) == (engine, 3, True) and f", {engine} engine;" in up.line()
    manifest = json.loads(s3.get_object(Bucket=bucket, Key=url.key(MANIFEST_NAME))["Body"].read())["files"]
    for rel, data in files.items():  # the manifest and S3 hold the hashes of the local bytes
        head = s3.head_object(Bucket=bucket, Key=url.key(rel), ChecksumMode="ENABLED")
        assert manifest[rel]["sha256"] == hashlib.sha256(data).hexdigest()
        assert head["ChecksumCRC64NVME"] == base64.b64encode(crt.crc64nvme(data).to_bytes(8, "big")).decode()

    def no_second_read(*a, **k):
        raise AssertionError("a download read a file back to hash it")

    monkeypatch.setattr(transfer, "digest_file", no_second_read)
    monkeypatch.setattr(transfer, "local_checksum", no_second_read)
    monkeypatch.setattr(transfer, "crc64nvme_of", no_second_read)
    client = make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), validate_responses=False)
    down = download(url, tmp_path / "dst", client, settings, progress=False)
    assert (down.engine, down.transferred, down.verified, down.as_dict()["engine"]) == (engine, 3, True, engine)
    assert {rel: (tmp_path / "dst" / rel).read_bytes() for rel in files} == files

    # other bytes of the same size behind the manifest: caught from the streamed hash, nothing replaced
    s3.put_object(Bucket=bucket, Key=url.key("d/big.bin"), Body=b"x" * len(files["d/big.bin"]))
    with pytest.raises(StorageError) as e:
        download(url, tmp_path / "dst2", client, settings, progress=False)
    assert (
        str(e.value)
        == f"{url}: downloaded files do not match: d/big.bin (crc64nvme differs from the manifest) (nothing replaced)"
    )
    assert not [p for p in (tmp_path / "dst2").rglob("*") if p.is_file()]


def test_a_crt_that_cannot_start_leaves_the_classic_engine_to_do_the_work(tmp_path, s3_env, s3, bucket, monkeypatch):
    from mltrain.storage import engine

    def broken(*a, **k):
        raise RuntimeError("no CRT here")

    monkeypatch.setattr(engine, "crt_manager", broken)
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_bytes(b"f" * 100)
    s = upload(tmp_path / "src", parse_s3_url(f"s3://{bucket}/fb"), make_client(S3Options(s3_env["AWS_ENDPOINT_URL"])),
               TransferSettings(engine="crt"), progress=False)  # fmt: skip
    assert (s.engine, s.engine_reason, s.transferred) == (
        "classic",
        "CRT client unavailable (RuntimeError: no CRT here)",
        1,
    )
    assert s.as_dict()["engine_reason"] == s.engine_reason


def test_an_upload_client_does_not_hash_bodies_again_for_the_signature(tmp_path, s3_env, bucket):
    """Over plain http botocore signs a SHA256 of every body; an upload that sends the checksum of its
    own read in a signed header leaves that out (as it always is over https)."""
    seen = []
    for sign in (True, False):
        client = make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), sign_payload=sign)
        client.meta.events.register("before-send.s3.PutObject", lambda request, **k: seen.append(request.headers))
        client.put_object(Bucket=bucket, Key=f"k{sign}", Body=b"x" * 100, ChecksumAlgorithm="CRC32")
    assert [h["X-Amz-Content-SHA256"] for h in seen] == [
        hashlib.sha256(b"x" * 100).hexdigest().encode(),
        b"UNSIGNED-PAYLOAD",
    ]


def test_a_crc64nvme_manifest_is_checked_without_sha256(tmp_path, s3_env, s3, bucket, monkeypatch):
    """A manifest entry with a full-object CRC64NVME: the download, and the rerun's check of a file already in
    place, compare that alone (no sha256 of the bytes); a same-size file with other bytes is replaced."""
    src = tmp_path / "src"
    src.mkdir()
    data = {"a.bin": bytes(range(256)) * 40, "b.bin": b"b" * 7000}
    for rel, body in data.items():
        (src / rel).write_bytes(body)
    url = parse_s3_url(f"s3://{bucket}/crc")
    client = make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), validate_responses=False)
    upload(src, url, client, TransferSettings(), progress=False)
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "a.bin").write_bytes(data["a.bin"])  # already right
    (dst / "b.bin").write_bytes(b"x" * 7000)  # same size, other bytes

    def no_sha(*a, **k):
        raise AssertionError("sha256 computed for a file its manifest gives a CRC64NVME")

    monkeypatch.setattr(transfer, "digest_file", no_sha)
    monkeypatch.setattr(transfer.StreamDigest, "sha256", property(no_sha))
    down = download(url, dst, client, TransferSettings(), progress=False)
    assert (down.transferred, down.skipped, down.verified) == (1, 1, True)
    assert {rel: (dst / rel).read_bytes() for rel in data} == data
