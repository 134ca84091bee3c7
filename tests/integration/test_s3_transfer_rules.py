"""The exact rules of upload and download against moto's real S3 server, called in this process (no CLI
start-up per call): what is skipped, what is sent, what the manifest records, which local files are ours
and never data, and what a download does with objects the manifest does not list."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from pathlib import Path

import pytest

from mltrain.storage.client import S3Options, make_client
from mltrain.storage.manifest import MANIFEST_NAME
from mltrain.storage.transfer import TransferSettings, download, local_files, upload
from mltrain.storage.url import StorageError, parse_s3_url
from mltrain.storage.verify import verify_prefix

SHA = TransferSettings(checksum="sha256", concurrency=4, hash_workers=2)


@pytest.fixture
def client(s3_env):
    return make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), validate_responses=False)


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def manifest_of(s3, bucket: str, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_NAME}")["Body"].read())["files"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- upload: skip rules


def test_upload_resends_a_same_size_file_whose_bytes_changed(tmp_path, client, s3, bucket):
    src = tree(tmp_path / "src", {"a.bin": b"A" * 4000, "b.bin": b"B" * 3000})
    url = parse_s3_url(f"s3://{bucket}/same")
    first = upload(src, url, client, SHA, progress=False)
    assert (first.files, first.transferred, first.skipped) == (2, 2, 0)

    (src / "a.bin").write_bytes(b"Z" * 4000)  # same size, different bytes
    again = upload(src, url, client, SHA, progress=False)
    assert (again.transferred, again.skipped, again.bytes_transferred) == (1, 1, 4000)
    assert s3.get_object(Bucket=bucket, Key="same/a.bin")["Body"].read() == b"Z" * 4000
    assert manifest_of(s3, bucket, "same")["a.bin"]["sha256"] == sha(b"Z" * 4000)
    assert verify_prefix(client, url, deep=True, progress=False).ok


def test_upload_resends_an_object_another_tool_overwrote_with_same_size(tmp_path, client, s3, bucket):
    """S3 holds the right size but other bytes (and a checksum of those): size alone must not skip it."""
    src = tree(tmp_path / "src", {"a.bin": b"A" * 5000})
    url = parse_s3_url(f"s3://{bucket}/foreign")
    upload(src, url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="foreign/a.bin", Body=b"Q" * 5000, ChecksumAlgorithm="SHA256")
    again = upload(src, url, client, SHA, progress=False)
    assert (again.transferred, again.skipped) == (1, 0)
    assert s3.get_object(Bucket=bucket, Key="foreign/a.bin")["Body"].read() == b"A" * 5000


def test_upload_skips_exactly_the_unchanged_files(tmp_path, client, s3, bucket):
    src = tree(tmp_path / "src", {f"d/{i}.bin": bytes([i]) * (1000 + i) for i in range(5)})
    url = parse_s3_url(f"s3://{bucket}/skip")
    upload(src, url, client, SHA, progress=False)
    (src / "d/3.bin").write_bytes(b"x" * 10)  # other size
    again = upload(src, url, client, SHA, progress=False)
    assert (again.files, again.transferred, again.skipped) == (5, 1, 4)
    assert again.bytes_total == sum(1000 + i for i in range(5) if i != 3) + 10
    assert again.bytes_transferred == 10


# --------------------------------------------------------------------------- upload: manifest merge


def test_manifest_records_the_new_digest_of_a_reuploaded_file(tmp_path, client, s3, bucket):
    src = tree(tmp_path / "src", {"a.bin": b"1" * 2000, "b.bin": b"2" * 2000})
    url = parse_s3_url(f"s3://{bucket}/re")
    upload(src, url, client, SHA, progress=False)
    (src / "a.bin").write_bytes(b"3" * 2500)
    upload(src, url, client, SHA, progress=False)
    m = manifest_of(s3, bucket, "re")
    assert m["a.bin"]["sha256"] == sha(b"3" * 2500) and m["a.bin"]["size"] == 2500
    assert m["b.bin"]["sha256"] == sha(b"2" * 2000)
    assert verify_prefix(client, url, deep=True, progress=False).ok

    # the same file uploaded alone (a second upload of one file into the prefix) replaces its entry too
    one = tmp_path / "one" / "a.bin"
    tree(one.parent, {"a.bin": b"4" * 2500})
    upload(one, url, client, SHA, progress=False)
    m = manifest_of(s3, bucket, "re")
    assert set(m) == {"a.bin", "b.bin"} and m["a.bin"]["sha256"] == sha(b"4" * 2500)
    assert verify_prefix(client, url, deep=True, progress=False).ok


def test_second_upload_with_other_files_keeps_the_first_ones_in_the_manifest(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/two")
    upload(tree(tmp_path / "one", {"a.bin": b"a" * 100, "sub/b.bin": b"b" * 200}), url, client, SHA, progress=False)
    upload(tree(tmp_path / "two", {"c.bin": b"c" * 300}), url, client, SHA, progress=False)
    m = manifest_of(s3, bucket, "two")
    assert sorted(m) == ["a.bin", "c.bin", "sub/b.bin"]
    assert [m[r]["sha256"] for r in sorted(m)] == [sha(b"a" * 100), sha(b"c" * 300), sha(b"b" * 200)]
    rep = verify_prefix(client, url, progress=False)
    assert rep.ok and (rep.checked, rep.bytes, rep.extra, rep.missing) == (3, 600, [], [])


def test_manifest_drops_entries_whose_objects_are_gone_or_resized(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/gone")
    upload(tree(tmp_path / "one", {"a.bin": b"a" * 100, "b.bin": b"b" * 100}), url, client, SHA, progress=False)
    s3.delete_object(Bucket=bucket, Key="gone/a.bin")
    s3.put_object(Bucket=bucket, Key="gone/b.bin", Body=b"b" * 7)  # another tool, another size
    upload(tree(tmp_path / "two", {"c.bin": b"c"}), url, client, SHA, progress=False)
    assert sorted(manifest_of(s3, bucket, "gone")) == ["c.bin"]
    rep = verify_prefix(client, url, progress=False)
    assert rep.extra == ["b.bin"] and rep.missing == [] and rep.mismatched == []


# --------------------------------------------------------------------------- our temp files are never data


TEMPS = [".a.bin.25511.mltrain-tmp", ".a.bin.25511.mltrain-tmp.b5AD9462", "sub/.c.bin.7.mltrain-tmp.0f0f0f0f"]


def test_temp_names_are_recognised():
    from mltrain.storage.transfer import is_our_temp

    for name in TEMPS:
        assert is_our_temp(name.rsplit("/", 1)[-1]), name
    for name in ["a.bin", "a.mltrain-tmp.bin", ".a.bin.x.mltrain-tmp", "a.bin.1.mltrain-tmp", ".a.1.mltrain-tmp.xyz"]:
        assert not is_our_temp(name), name


def test_upload_never_sends_our_temp_files(tmp_path, client, s3, bucket):
    src = tree(tmp_path / "src", {"a.bin": b"a" * 10, "sub/c.bin": b"c" * 10, **{t: b"partial" for t in TEMPS}})
    assert sorted(local_files(src)) == ["a.bin", "sub/c.bin"]
    url = parse_s3_url(f"s3://{bucket}/tmp")
    s = upload(src, url, client, SHA, progress=False)
    assert (s.files, s.transferred) == (2, 2)
    keys = sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix="tmp/")["Contents"])
    assert keys == ["tmp/.mltrain-manifest.json", "tmp/a.bin", "tmp/sub/c.bin"]
    assert sorted(manifest_of(s3, bucket, "tmp")) == ["a.bin", "sub/c.bin"]


def test_download_keeps_complete_verified_temps_and_removes_every_other_temp(tmp_path, client, s3, bucket):
    """What a `kill -9` leaves: temps s3transfer finished (ours, no suffix) and its own ones (with its
    random suffix), mostly partial. The rerun keeps those whose bytes match the manifest, removes the rest."""
    data = {"a.bin": b"a" * 3000, "b.bin": b"b" * 3000, "sub/c.bin": b"c" * 3000, "d.bin": b"d" * 3000}
    url = parse_s3_url(f"s3://{bucket}/k")
    upload(tree(tmp_path / "src", data), url, client, SHA, progress=False)
    dst = tree(
        tmp_path / "dst",
        {
            ".a.bin.4242.mltrain-tmp": data["a.bin"],  # complete and right: kept
            ".b.bin.4242.mltrain-tmp": b"B" * 3000,  # complete size, wrong bytes: removed, downloaded again
            ".b.bin.4242.mltrain-tmp.b5AD9462": b"b" * 100,  # partial: removed
            ".d.bin.77.mltrain-tmp.ABCDEF12": data["d.bin"],  # s3transfer's, every byte in: kept
            "sub/.c.bin.4242.mltrain-tmp.0A1b2C3d": b"c" * 10,  # partial: removed
            ".gone.bin.4242.mltrain-tmp": b"x",  # an object that is no longer there: removed
        },
    )
    s = download(url, dst, client, SHA, progress=False)
    assert (s.recovered, s.transferred, s.skipped) == (2, 2, 0)
    assert s.bytes_transferred == 6000
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == sorted(data)
    for rel, want in data.items():
        assert (dst / rel).read_bytes() == want, rel
    again = download(url, dst, client, SHA, progress=False)
    assert (again.recovered, again.transferred, again.skipped) == (0, 0, 4)


def test_download_temp_name_fits_the_file_name_limit_with_s3transfer_suffix(tmp_path, client, s3, bucket):
    name = "n" * 240 + ".bin"  # 244 characters: our prefix, pid and suffix plus s3transfer's 9 would not fit
    url = parse_s3_url(f"s3://{bucket}/long")
    upload(tree(tmp_path / "src", {name: b"L" * 50}), url, client, SHA, progress=False)
    s = download(url, tmp_path / "dst", client, SHA, progress=False)
    assert s.transferred == 1 and (tmp_path / "dst" / name).read_bytes() == b"L" * 50
    assert [p.name for p in (tmp_path / "dst").iterdir()] == [name]


# --------------------------------------------------------------------------- download: only what the manifest lists


def no_checksum_put(s3_env, bucket: str, key: str, body: bytes) -> None:
    """PutObject without an additional checksum (boto3 adds CRC32 by default): S3 then stores none."""
    import boto3
    from botocore.config import Config

    cfg = Config(request_checksum_calculation="when_required")
    boto3.client("s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], config=cfg).put_object(
        Bucket=bucket, Key=key, Body=body
    )


def test_download_skips_and_names_objects_the_manifest_does_not_list(tmp_path, s3_env, client, s3, bucket):
    data = {"a.bin": b"a" * 500, "d/b.bin": b"b" * 600}
    url = parse_s3_url(f"s3://{bucket}/u")
    upload(tree(tmp_path / "src", data), url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="u/d/extra.bin", Body=b"not listed")  # boto3's default: CRC32
    s3.put_object(Bucket=bucket, Key="u/z.bin", Body=b"z" * 5, ChecksumAlgorithm="SHA256")
    no_checksum_put(s3_env, bucket, "u/n.bin", b"no checksum")
    dst = tmp_path / "dst"

    s = download(url, dst, client, SHA, progress=False)
    assert (s.files, s.transferred, s.skipped, s.unlisted) == (2, 2, 0, ["d/extra.bin", "n.bin", "z.bin"])
    assert s.bytes_total == 1100 and s.bytes_transferred == 1100 and s.unchecked == [] and s.verified
    assert sorted(p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()) == sorted(data)

    # into a directory that already holds good copies: still nothing outside the manifest
    s = download(url, dst, client, SHA, progress=False)
    assert (s.transferred, s.skipped, s.unlisted) == (0, 2, ["d/extra.bin", "n.bin", "z.bin"])
    assert not (dst / "d/extra.bin").exists()

    # asked for: fetched, checked against S3's CRC32 and SHA256; the one with no checksum is said to be
    # checked by size only
    s = download(url, dst, client, SHA, progress=False, unlisted=True)
    assert (s.files, s.transferred, s.skipped, s.unlisted) == (5, 3, 2, [])
    assert (s.unchecked, s.verified) == (["n.bin"], False)
    assert (dst / "d/extra.bin").read_bytes() == b"not listed" and (dst / "z.bin").read_bytes() == b"z" * 5
    assert (dst / "n.bin").read_bytes() == b"no checksum"
    # and then they count as already there: the checksummed ones by their checksum, the other again
    s = download(url, dst, client, SHA, progress=False, unlisted=True)
    assert (s.transferred, s.skipped, s.unchecked) == (1, 4, ["n.bin"])
    # only the names given
    s = download(url, tmp_path / "dst2", client, SHA, progress=False, unlisted={"z.bin"})
    assert (s.files, s.unlisted) == (3, ["d/extra.bin", "n.bin"])
    assert (tmp_path / "dst2" / "z.bin").is_file() and not (tmp_path / "dst2" / "n.bin").exists()


@pytest.mark.parametrize("algo", ["SHA256", "CRC32"])
def test_download_of_an_unlisted_object_checks_s3s_whole_object_checksum(tmp_path, client, s3, bucket, algo):
    """moto stores whatever checksum a client claims: a wrong one must stop the download."""
    import base64
    import zlib

    url = parse_s3_url(f"s3://{bucket}/w")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    forged = {
        "SHA256": base64.b64encode(hashlib.sha256(b"other").digest()).decode(),
        "CRC32": base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode(),
    }[algo]
    s3.put_object(Bucket=bucket, Key="w/x.bin", Body=b"x" * 9, ChecksumAlgorithm=algo, **{f"Checksum{algo}": forged})
    dst = tmp_path / "dst"
    with pytest.raises(StorageError, match=rf"x\.bin \({algo.lower()} differs from S3's checksum\)"):
        download(url, dst, client, SHA, progress=False, unlisted=True)
    assert not [p for p in dst.rglob("*") if p.is_file()]


def test_download_without_a_manifest_downloads_nothing_unless_asked(tmp_path, client, s3, bucket):
    s3.put_object(Bucket=bucket, Key="raw/x.txt", Body=b"xx", ChecksumAlgorithm="SHA256")
    url = parse_s3_url(f"s3://{bucket}/raw")
    dst = tmp_path / "dst"
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False)
    assert f"s3://{bucket}/raw: no {MANIFEST_NAME}" in str(e.value) and "--unlisted" in str(e.value)
    assert not dst.exists()
    s = download(url, dst, client, SHA, progress=False, unlisted=True)
    assert s.transferred == 1 and s.unchecked == [] and (dst / "x.txt").read_bytes() == b"xx"


def test_download_refuses_when_objects_the_manifest_lists_are_missing(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/m")
    upload(tree(tmp_path / "src", {"a.bin": b"a", "b.bin": b"b", "c.bin": b"c"}), url, client, SHA, progress=False)
    s3.delete_object(Bucket=bucket, Key="m/b.bin")
    dst = tmp_path / "dst"
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False)
    assert "1 file(s) the manifest lists are not on S3: b.bin" in str(e.value)
    assert not dst.exists()


def test_single_object_download_follows_the_same_rule(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/one")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 10, "b.bin": b"b"}), url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="one/x.bin", Body=b"x")
    dst = tmp_path / "dst"
    dst.mkdir()
    assert download(url.child("a.bin"), dst, client, SHA, progress=False).transferred == 1
    with pytest.raises(StorageError, match=r"one/x\.bin: not in the manifest .*--unlisted"):
        download(url.child("x.bin"), dst, client, SHA, progress=False)
    assert sorted(os.listdir(dst)) == ["a.bin"]


def test_download_of_a_prefix_whose_manifest_lists_none_of_its_objects(tmp_path, client, s3, bucket):
    (tmp_path / "empty").mkdir()
    url = parse_s3_url(f"s3://{bucket}/e")
    assert upload(tmp_path / "empty", url, client, SHA, progress=False).files == 0
    assert manifest_of(s3, bucket, "e") == {}
    s3.put_object(Bucket=bucket, Key="e/x.bin", Body=b"x")
    with pytest.raises(
        StorageError, match=rf"^s3://{bucket}/e: none of its 1 object\(s\) is in its manifest; --unlisted"
    ):
        download(url, tmp_path / "dst", client, SHA, progress=False)
    assert not (tmp_path / "dst").exists()


def test_download_into_a_file_is_refused(tmp_path, client, bucket):
    url = parse_s3_url(f"s3://{bucket}/f")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    (tmp_path / "plain").write_text("keep me")
    with pytest.raises(StorageError, match=r"plain: exists and is not a directory"):
        download(url, tmp_path / "plain", client, SHA, progress=False)
    assert (tmp_path / "plain").read_text() == "keep me"


# --------------------------------------------------------------------------- upload: whose checksum S3 stores


def _hash_as_if_the_file_changed_after_hashing(monkeypatch) -> None:
    """The digest upload computes says other bytes than the ones it then reads and sends: what a file
    changed between hashing and sending looks like (moto stores the checksum a client claims)."""
    import dataclasses

    from mltrain.storage import transfer
    from mltrain.storage.digest import digest_file

    def other(path, part_size, algorithm="SHA256"):
        d = digest_file(path, part_size, algorithm)
        b = bytearray(base64.b64decode(d.s3_checksum.split(":", 1)[1].split("-")[0]))
        b[0] ^= 0xFF
        algo = d.s3_checksum.split(":", 1)[0]
        return dataclasses.replace(d, s3_checksum=f"{algo}:{base64.b64encode(bytes(b)).decode()}")

    monkeypatch.setattr(transfer, "digest_file", other)


@pytest.mark.parametrize("checksum", ["sha256", "crc64nvme"])
def test_a_single_put_sends_the_checksum_computed_while_hashing(tmp_path, client, s3, bucket, monkeypatch, checksum):
    """S3 refuses a PUT whose bytes do not match the checksum sent with it: so it must be ours, not one
    botocore computes from the bytes it reads at send time."""
    from mltrain.storage.digest import crt_available

    if checksum == "crc64nvme" and not crt_available():
        pytest.skip("CRC64NVME needs awscrt")  # the s3 extra installs it; sha256 covers the rule without it
    _hash_as_if_the_file_changed_after_hashing(monkeypatch)
    src = tree(tmp_path / "src", {"a.bin": b"a" * 1000})
    url = parse_s3_url(f"s3://{bucket}/claim-{checksum}")
    upload(src, url, client, TransferSettings(checksum=checksum), progress=False)
    claimed = manifest_of(s3, bucket, f"claim-{checksum}")["a.bin"]["s3_checksum"]
    h = s3.head_object(Bucket=bucket, Key=f"claim-{checksum}/a.bin", ChecksumMode="ENABLED")
    assert f"{checksum.upper()}:{h[f'Checksum{checksum.upper()}']}" == claimed


def test_a_sha256_multipart_upload_is_checked_after_it_lands(tmp_path, client, s3, bucket, monkeypatch):
    """botocore computes SHA256 part checksums itself: upload compares the composite S3 stores with its own."""
    _hash_as_if_the_file_changed_after_hashing(monkeypatch)
    src = tree(tmp_path / "src", {"big.bin": os.urandom(6 * 1024 * 1024)})
    url = parse_s3_url(f"s3://{bucket}/mp")
    settings = TransferSettings(checksum="sha256", part_size=5 << 20, threshold=5 << 20)
    with pytest.raises(StorageError, match=r"uploaded objects do not match the local files: big\.bin \(expected"):
        upload(src, url, client, settings, progress=False)
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix=f"mp/{MANIFEST_NAME}")


def test_upload_aborts_only_the_unfinished_multipart_uploads_of_keys_it_sends(tmp_path, client, s3, bucket):
    """A killed run's upload of a key we send again is aborted; another writer's upload beside it is not."""
    mine = s3.create_multipart_upload(Bucket=bucket, Key="ab/a.bin")["UploadId"]
    other = s3.create_multipart_upload(Bucket=bucket, Key="ab/not-ours.bin")["UploadId"]
    s = upload(
        tree(tmp_path / "src", {"a.bin": b"a" * 10}), parse_s3_url(f"s3://{bucket}/ab"), client, SHA, progress=False
    )
    assert s.aborted_multipart_uploads == 1
    left = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket, Prefix="ab/").get("Uploads", [])}
    assert other in left and mine not in left
