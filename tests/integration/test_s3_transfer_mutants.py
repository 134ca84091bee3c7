"""The exact behaviour of storage/transfer.py that its other tests leave loose, pinned so that a small edit
(a mutant) is seen: the --delete refusal and the deletes themselves, what an upload skips and records,
which objects a download selects, which temp files it keeps or removes, what it checks, and the words,
counts and units of its messages. Against moto's real S3 server in this process; a small fake client only
where moto cannot produce the case (each says why)."""

from __future__ import annotations

import base64
import errno
import hashlib
import io
import json
import os
import threading
import time
import zlib
from pathlib import Path

import pytest

from mltrain.storage import transfer
from mltrain.storage.client import S3Options, make_client
from mltrain.storage.manifest import MANIFEST_NAME
from mltrain.storage.transfer import (
    MiB,
    TransferSettings,
    TransferSummary,
    abort_stale_uploads,
    download,
    list_objects,
    local_files,
    sync,
    upload,
)
from mltrain.storage.url import S3Url, StorageError, parse_s3_url

SHA = TransferSettings(checksum="sha256", concurrency=4, hash_workers=2)
HOW = "checked against the checksum S3 stores (by size where it stores none)"


@pytest.fixture(autouse=True)
def _own_cwd(tmp_path, monkeypatch):
    """A mutant that turns a path into str(None) writes into the working directory: keep it per test."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def client(s3_env):
    return make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), validate_responses=False)


def tree(root: Path, files: dict[str, bytes]) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def files_under(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def keys_under(s3, bucket: str, prefix: str) -> list[str]:
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", []))


def manifest_of(s3, bucket: str, prefix: str) -> dict:
    return json.loads(s3.get_object(Bucket=bucket, Key=f"{prefix}/{MANIFEST_NAME}")["Body"].read())["files"]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def b64_sha256(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def forge_manifest_sha(s3, bucket: str, prefix: str, rels: list[str]) -> None:
    """Rewrite the manifest so it records other sha256s for `rels`: what a download sees when the objects'
    bytes are not the ones that were uploaded."""
    key = f"{prefix}/{MANIFEST_NAME}"
    raw = json.loads(s3.get_object(Bucket=bucket, Key=key)["Body"].read())
    for rel in rels:
        raw["files"][rel]["sha256"] = sha(b"something else")
    s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(raw).encode())


# --------------------------------------------------------------------------- --delete: the refusal


def test_upload_delete_refusal_of_21_names_the_first_20_and_counts_the_rest(tmp_path, client, s3, bucket):
    src = tree(tmp_path / "src", {"keep.bin": b"k"})
    extra = [f"x{i:02d}.bin" for i in range(21)]
    for rel in extra:
        s3.put_object(Bucket=bucket, Key=f"d/{rel}", Body=b"old")
    url = parse_s3_url(f"s3://{bucket}/d")
    with pytest.raises(StorageError) as e:
        upload(src, url, client, SHA, delete=True, progress=False)
    assert str(e.value) == (
        f"--delete would delete 21 file(s) from s3://{bucket}/d that the source does not have: "
        + ", ".join(extra[:20])
        + ", ... (1 more); rerun with --yes to delete them (nothing was transferred or deleted)"
    )
    # and indeed nothing was: no object sent, none deleted, no manifest
    assert keys_under(s3, bucket, "d/") == [f"d/{r}" for r in extra]


def test_download_delete_refusal_of_exactly_20_lists_them_all(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/r")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    stray = {f"s{i:02d}.txt": b"mine" for i in range(20)}
    dst = tree(tmp_path / "dst", stray)
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, delete=True, progress=False)
    assert str(e.value) == (
        f"--delete would delete 20 file(s) from {dst} that the source does not have: "
        + ", ".join(sorted(stray))
        + "; rerun with --yes to delete them (nothing was transferred or deleted)"
    )
    assert files_under(dst) == stray  # a.bin was not downloaded, nothing deleted


def test_download_delete_spares_unlisted_objects_local_copies_and_our_own_files(tmp_path, client, s3, bucket):
    """--delete removes local files S3 does not have: not the local copy of an object it has but did not
    download (not in the manifest), not a manifest, not our temp files (removed as temps, not as victims)."""
    url = parse_s3_url(f"s3://{bucket}/v")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="v/extra.bin", Body=b"e")
    dst = tree(
        tmp_path / "dst", {"extra.bin": b"local", "gone.bin": b"g", "sub/gone2.bin": b"g2", MANIFEST_NAME: b"{}"}
    )
    s = download(url, dst, client, SHA, delete=True, yes=True, progress=False)
    assert s.deleted == ["gone.bin", "sub/gone2.bin"]
    assert files_under(dst) == {MANIFEST_NAME: b"{}", "a.bin": b"a", "extra.bin": b"local"}
    assert s.line().endswith("; 2 deleted")


def test_upload_delete_with_yes_deletes_exactly_the_extra_objects_and_drops_them_from_the_manifest(
    tmp_path, client, s3, bucket
):
    url = parse_s3_url(f"s3://{bucket}/y")
    upload(tree(tmp_path / "one", {"a.bin": b"a", "b.bin": b"b", "c/d.bin": b"d"}), url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="y2/a.bin", Body=b"sibling prefix")  # not under y/
    s = upload(tree(tmp_path / "two", {"a.bin": b"a"}), url, client, SHA, delete=True, yes=True, progress=False)
    assert (s.deleted, s.transferred, s.skipped) == (["b.bin", "c/d.bin"], 0, 1)
    assert keys_under(s3, bucket, "y") == [f"y/{MANIFEST_NAME}", "y/a.bin", "y2/a.bin"]
    assert sorted(manifest_of(s3, bucket, "y")) == ["a.bin"]
    # without --delete, extra objects are left alone and the manifest keeps them
    upload(tree(tmp_path / "three", {"n.bin": b"n"}), url, client, SHA, progress=False)
    s = upload(tree(tmp_path / "four", {"a.bin": b"a"}), url, client, SHA, progress=False)
    assert s.deleted == [] and sorted(manifest_of(s3, bucket, "y")) == ["a.bin", "n.bin"]


# --------------------------------------------------------------------------- --delete: the deletes


class _DeleteRecorder:
    """S3's DeleteObjects contract: at most 1000 keys a request (MalformedXML beyond). moto accepts any
    number, so a fake client records the requests instead."""

    def __init__(self, errors: list[dict] | None = None) -> None:
        self.requests: list[tuple[str, list[str], bool]] = []
        self.errors = errors

    def delete_objects(self, Bucket: str, Delete: dict) -> dict:  # noqa: N803 (boto3's names)
        keys = [o["Key"] for o in Delete["Objects"]]
        if len(keys) > 1000:
            raise AssertionError(f"{len(keys)} keys in one DeleteObjects request: S3 refuses more than 1000")
        self.requests.append((Bucket, keys, Delete.get("Quiet")))
        return {"Errors": self.errors} if self.errors else {}


def test_deletes_go_in_requests_of_at_most_1000_keys_each_key_once():
    fake = _DeleteRecorder()
    rels = [f"f{i:05d}" for i in range(2001)]
    transfer._delete_objects(fake, S3Url("b", "p"), rels)
    assert [len(k) for _, k, _ in fake.requests] == [1000, 1000, 1]
    assert [k for _, keys, _ in fake.requests for k in keys] == [f"p/{r}" for r in rels]
    assert {b for b, _, _ in fake.requests} == {"b"}
    fake = _DeleteRecorder()
    transfer._delete_objects(fake, S3Url("b", "p"), rels[:1000])
    assert [len(k) for _, k, _ in fake.requests] == [1000]


def test_a_delete_s3_refuses_is_one_line_naming_the_first_key_and_its_error():
    """moto never answers DeleteObjects with Errors (per-key failures: AccessDenied under a bucket policy)."""
    errors = [
        {"Key": "p/a.bin", "Code": "AccessDenied", "Message": "Access Denied"},
        {"Key": "p/b.bin", "Code": "InternalError", "Message": "later"},
    ]
    with pytest.raises(StorageError) as e:
        transfer._delete_objects(_DeleteRecorder(errors), S3Url("b", "p"), ["a.bin", "b.bin"])
    assert str(e.value) == "s3://b/p: could not delete p/a.bin: AccessDenied Access Denied"
    with pytest.raises(StorageError) as e:  # an error without a message
        transfer._delete_objects(_DeleteRecorder([{"Key": "p/a.bin", "Code": "AccessDenied"}]), S3Url("b", "p"), ["a"])
    assert str(e.value) == "s3://b/p: could not delete p/a.bin: AccessDenied "
    # a failing first batch stops before the next one is sent
    fake = _DeleteRecorder(errors)
    with pytest.raises(StorageError):
        transfer._delete_objects(fake, S3Url("b", "p"), [f"f{i}" for i in range(1500)])
    assert len(fake.requests) == 1


def test_real_deletes_on_moto_remove_exactly_the_keys(client, s3, bucket):
    for k in ("q/a", "q/b", "q/c", "qq/a"):
        s3.put_object(Bucket=bucket, Key=k, Body=b"x")
    transfer._delete_objects(client, parse_s3_url(f"s3://{bucket}/q"), ["a", "c"])
    assert keys_under(s3, bucket, "q") == ["q/b", "qq/a"]


# --------------------------------------------------------------------------- upload: what is sent and recorded


def test_upload_summary_and_manifest_of_a_first_and_a_second_run(tmp_path, client, s3, bucket):
    data = {"a.bin": b"a" * 300, "s/b.bin": b"b" * 200, "s/t/c.bin": b"c" * 100}
    src = tree(tmp_path / "src", data)
    url = parse_s3_url(f"s3://{bucket}/m")
    s = upload(src, url, client, SHA, progress=False)
    assert (s.direction, s.source, s.dest, s.checksum_algorithm) == ("upload", str(src), f"s3://{bucket}/m", "SHA256")
    assert (s.files, s.transferred, s.skipped, s.bytes_total, s.bytes_transferred) == (3, 3, 0, 600, 600)
    assert (s.verified, s.deleted, s.aborted_multipart_uploads, s.recovered) == (True, [], 0, 0)
    assert 0 < s.transfer_seconds <= s.seconds < 60
    m = manifest_of(s3, bucket, "m")
    assert m == {
        rel: {"size": len(b), "sha256": sha(b), "part_size": 0, "s3_checksum": f"SHA256:{b64_sha256(b)}"}
        for rel, b in data.items()
    }
    for rel, b in data.items():
        h = s3.head_object(Bucket=bucket, Key=f"m/{rel}", ChecksumMode="ENABLED")
        assert h["ChecksumSHA256"] == b64_sha256(b)
        assert s3.get_object(Bucket=bucket, Key=f"m/{rel}")["Body"].read() == b
    again = upload(src, url, client, SHA, progress=False)
    assert (again.files, again.transferred, again.skipped, again.bytes_total, again.bytes_transferred) == (
        3, 0, 3, 600, 0,
    )  # fmt: skip
    assert again.verified and again.mib_per_s == 0.0
    assert again.line().startswith("upload: 0 file(s) uploaded, 3 already there; 0.0 MiB in ")


def test_upload_of_one_file_puts_it_under_its_name(tmp_path, client, s3, bucket):
    f = tree(tmp_path / "src", {"one.bin": b"1" * 10}) / "one.bin"
    s = upload(f, parse_s3_url(f"s3://{bucket}/o"), client, SHA, progress=False)
    assert (s.files, s.transferred, s.source) == (1, 1, str(f))
    assert keys_under(s3, bucket, "o/") == [f"o/{MANIFEST_NAME}", "o/one.bin"]


def test_upload_leaves_out_excluded_files(tmp_path, client, s3, bucket):
    src = tree(tmp_path / "src", {"a.bin": b"a", "MARK": b"m", "s/MARK": b"m2"})
    s = upload(src, parse_s3_url(f"s3://{bucket}/x"), client, SHA, progress=False, exclude=lambda r: r == "MARK")
    assert (s.files, s.transferred, s.bytes_total) == (2, 2, 3)
    assert keys_under(s3, bucket, "x/") == [f"x/{MANIFEST_NAME}", "x/a.bin", "x/s/MARK"]
    assert sorted(manifest_of(s3, bucket, "x")) == ["a.bin", "s/MARK"]


def test_upload_skips_only_objects_with_the_same_size_and_stored_checksum(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/k")
    s3.put_object(Bucket=bucket, Key="k/same.bin", Body=b"s" * 50, ChecksumAlgorithm="SHA256")  # same bytes
    s3.put_object(Bucket=bucket, Key="k/nosum.bin", Body=b"n" * 50, ChecksumAlgorithm="CRC32")  # other algorithm
    s3.put_object(Bucket=bucket, Key="k/size.bin", Body=b"z" * 49, ChecksumAlgorithm="SHA256")
    src = tree(tmp_path / "src", {"same.bin": b"s" * 50, "nosum.bin": b"n" * 50, "size.bin": b"z" * 50})
    s = upload(src, url, client, SHA, progress=False)
    assert (s.transferred, s.skipped, s.bytes_transferred) == (2, 1, 100)
    assert s3.get_object(Bucket=bucket, Key="k/size.bin")["Body"].read() == b"z" * 50


def test_upload_resends_when_the_object_vanishes_between_listing_and_checking(
    tmp_path, client, s3, bucket, monkeypatch
):
    """The listing says the object is there with the right size; by the time it is checked it is gone."""
    url = parse_s3_url(f"s3://{bucket}/vn")
    src = tree(tmp_path / "src", {"a.bin": b"a" * 20})
    upload(src, url, client, SHA, progress=False)
    real = transfer.list_objects

    def listing_then_delete(c, u):
        out = real(c, u)
        s3.delete_object(Bucket=bucket, Key="vn/a.bin")
        return out

    monkeypatch.setattr(transfer, "list_objects", listing_then_delete)
    s = upload(src, url, client, SHA, progress=False)
    assert (s.transferred, s.skipped) == (1, 0)
    assert s3.get_object(Bucket=bucket, Key="vn/a.bin")["Body"].read() == b"a" * 20


def test_upload_delete_of_one_file_is_refused(tmp_path, client, bucket):
    f = tree(tmp_path / "src", {"a.bin": b"a"}) / "a.bin"
    with pytest.raises(StorageError) as e:
        upload(f, parse_s3_url(f"s3://{bucket}/p"), client, SHA, delete=True, yes=True, progress=False)
    assert str(e.value) == f"{f}: --delete needs a directory as the source, not one file"


def test_upload_of_a_missing_source(tmp_path, client, bucket):
    with pytest.raises(StorageError) as e:
        upload(tmp_path / "nope", parse_s3_url(f"s3://{bucket}/p"), client, SHA, progress=False)
    assert str(e.value) == f"{tmp_path / 'nope'}: no such file or directory"


def test_a_file_upload_cannot_read_is_named(tmp_path, client, bucket, monkeypatch):
    """Tests run as root, who reads any file: a refused read is made by the digest raising EACCES."""
    src = tree(tmp_path / "src", {"a.bin": b"a", "b.bin": b"b"})

    def refuse(path, part_size, algorithm="SHA256"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(transfer, "digest_file", refuse)
    with pytest.raises(StorageError) as e:
        upload(src, parse_s3_url(f"s3://{bucket}/p"), client, SHA, progress=False)
    assert str(e.value) == f"{src / 'a.bin'}: cannot read: Permission denied"


def test_local_files_lists_files_only_without_our_temps_and_manifests(tmp_path):
    root = tree(
        tmp_path / "t",
        {"a": b"", "d/b": b"", "d/e/c": b"", MANIFEST_NAME: b"", f"d/{MANIFEST_NAME}": b"", ".x.1.mltrain-tmp": b""},
    )
    (root / "empty_dir").mkdir()
    assert list(local_files(root)) == ["a", "d/b", "d/e/c"]
    assert local_files(root / "d" / "b") == {"b": root / "d" / "b"}


def test_list_objects_gives_sizes_under_the_prefix_only(client, s3, bucket):
    for key, body in {
        "p/a": b"1",
        "p/s/b": b"22",
        "p/": b"",  # a "folder" marker: not a file
        f"p/{MANIFEST_NAME}": b"{}",
        "p2/c": b"333",
        "pa": b"4",
    }.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    assert list_objects(client, parse_s3_url(f"s3://{bucket}/p")) == {"a": 1, "s/b": 2}
    assert list_objects(client, parse_s3_url(f"s3://{bucket}/nothing")) == {}
    everything = list_objects(client, parse_s3_url(f"s3://{bucket}"))
    assert everything == {"p/a": 1, "p/s/b": 2, "p/": 0, f"p/{MANIFEST_NAME}": 2, "p2/c": 3, "pa": 1}


def test_list_objects_error_names_the_url(client):
    with pytest.raises(StorageError) as e:
        list_objects(client, parse_s3_url("s3://no-such-bucket-lo/p"))
    assert str(e.value) == "s3://no-such-bucket-lo/p: bucket does not exist"


def test_abort_stale_uploads_under_a_prefix(client, s3, bucket):
    ids = {k: s3.create_multipart_upload(Bucket=bucket, Key=k)["UploadId"] for k in ("u/a", "u/s/b", "u2/c", "uc")}
    assert abort_stale_uploads(client, parse_s3_url(f"s3://{bucket}/u"), {"u/s/b", "u2/c"}) == 1
    left = {u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == {"u/a", "u2/c", "uc"}
    assert abort_stale_uploads(client, parse_s3_url(f"s3://{bucket}/u")) == 1  # every one under u/
    left = {u["UploadId"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])}
    assert left == {ids["u2/c"], ids["uc"]}
    assert abort_stale_uploads(client, parse_s3_url(f"s3://{bucket}")) == 2


def test_transfer_config_carries_the_knobs():
    """--concurrency, --part-size-mib and the threshold reach s3transfer; 100 queued writes of 1 MiB bound
    what a download buffers in memory."""
    cfg = TransferSettings(concurrency=3, part_size=7 * MiB, threshold=9 * MiB).transfer_config()
    assert (cfg.multipart_threshold, cfg.multipart_chunksize, cfg.max_request_concurrency) == (9 * MiB, 7 * MiB, 3)
    assert (cfg.max_io_queue_size, cfg.io_chunksize, cfg.use_threads) == (100, 1 << 20, True)


def counting_overlap(fn):
    """`fn` wrapped to hold each call 10 ms and count how many run at once; (wrapped, peak): peak[0] is the
    most seen together."""
    running, peak, lock = [0], [0], threading.Lock()

    def wrapped(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.01)
        with lock:
            running[0] -= 1
        return fn(*args, **kwargs)

    return wrapped, peak


def test_parallel_keeps_order_and_runs_at_most_workers_at_once():
    work, peak = counting_overlap(lambda x: x * 10)
    for workers in (1, 2):
        peak[0] = 0
        assert list(transfer._parallel(work, list(range(6)), workers)) == [0, 10, 20, 30, 40, 50]
        assert 1 <= peak[0] <= workers
    assert list(transfer._parallel(work, [], 4)) == []
    assert list(transfer._parallel(work, [7], 0)) == [70]  # 0 workers: still one


# --------------------------------------------------------------------------- download: what it selects


def test_download_summary_of_a_first_and_a_second_run(tmp_path, client, s3, bucket):
    data = {"a.bin": b"a" * 300, "s/b.bin": b"b" * 200}
    url = parse_s3_url(f"s3://{bucket}/dl")
    upload(tree(tmp_path / "src", data), url, client, SHA, progress=False)
    dst = tmp_path / "dst"
    s = download(url, dst, client, SHA, progress=False)
    assert (s.direction, s.source, s.dest, s.checksum_algorithm) == ("download", f"s3://{bucket}/dl", str(dst), "")
    assert (s.files, s.transferred, s.skipped, s.recovered, s.bytes_total, s.bytes_transferred) == (
        2, 2, 0, 0, 500, 500,
    )  # fmt: skip
    assert (s.verified, s.unchecked, s.unlisted, s.deleted) == (True, [], [], [])
    assert 0 < s.transfer_seconds <= s.seconds < 60
    assert files_under(dst) == data
    again = download(url, dst, client, SHA, progress=False)
    assert (again.files, again.transferred, again.skipped, again.bytes_total, again.bytes_transferred) == (
        2, 0, 2, 500, 0,
    )  # fmt: skip
    (dst / "a.bin").write_bytes(b"A" * 300)  # same size, other bytes: downloaded again
    (dst / "s/b.bin").write_bytes(b"b" * 199)
    third = download(url, dst, client, SHA, progress=False)
    assert (third.transferred, third.skipped, third.bytes_transferred) == (2, 0, 500)
    assert files_under(dst) == data


def test_download_into_a_directory_that_does_not_exist_yet_makes_the_tree(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/deep")
    upload(tree(tmp_path / "src", {"x/y/z.bin": b"z"}), url, client, SHA, progress=False)
    s = download(url, tmp_path / "new" / "dir", client, SHA, progress=False)
    assert s.transferred == 1 and files_under(tmp_path / "new" / "dir") == {"x/y/z.bin": b"z"}


def test_single_object_download_to_a_file_name_a_directory_and_from_the_bucket_root(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/one")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 7, "b.bin": b"b"}), url, client, SHA, progress=False)
    s = download(url.child("a.bin"), tmp_path / "renamed.bin", client, SHA, progress=False)
    assert (s.files, s.transferred, s.bytes_transferred, s.source, s.dest) == (
        1, 1, 7, f"s3://{bucket}/one", str(tmp_path / "renamed.bin"),
    )  # fmt: skip
    assert (tmp_path / "renamed.bin").read_bytes() == b"a" * 7
    dst = tree(tmp_path / "dst", {"other.txt": b"o"})
    s = download(url.child("a.bin"), dst, client, SHA, progress=False)
    assert s.dest == str(dst / "a.bin") and files_under(dst) == {"a.bin": b"a" * 7, "other.txt": b"o"}
    assert download(url.child("a.bin"), dst, client, SHA, progress=False).skipped == 1
    # a manifest that lists a file S3 lacks does not stop the download of one that is there
    s3.delete_object(Bucket=bucket, Key="one/b.bin")
    assert download(url.child("a.bin"), tmp_path / "again.bin", client, SHA, progress=False).transferred == 1

    root = parse_s3_url(f"s3://{bucket}")
    upload(tree(tmp_path / "rootsrc", {"r.bin": b"r"}), root, client, SHA, progress=False)
    s = download(root.child("r.bin"), tmp_path / "r.bin", client, SHA, progress=False)
    assert (s.transferred, s.source) == (1, f"s3://{bucket}") and (tmp_path / "r.bin").read_bytes() == b"r"


def test_single_object_download_errors(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/one")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    with pytest.raises(StorageError) as e:
        download(url.child("nope.bin"), tmp_path / "dst", client, SHA, progress=False)
    assert str(e.value) == f"s3://{bucket}/one/nope.bin: no such object or prefix"
    with pytest.raises(StorageError) as e:
        download(url.child("a.bin"), tmp_path / "dst", client, SHA, delete=True, yes=True, progress=False)
    assert str(e.value) == f"s3://{bucket}/one/a.bin: --delete needs a prefix as the source, not one object"
    s3.put_object(Bucket=bucket, Key="one/x.bin", Body=b"x")
    with pytest.raises(StorageError) as e:
        download(url.child("x.bin"), tmp_path / "dst", client, SHA, progress=False)
    assert (
        str(e.value)
        == f"s3://{bucket}/one/x.bin: not in the manifest of s3://{bucket}/one; --unlisted downloads it, {HOW}"
    )
    assert not (tmp_path / "dst").exists()
    s = download(url.child("x.bin"), tmp_path / "x.bin", client, SHA, progress=False, unlisted=True)
    assert s.transferred == 1 and (tmp_path / "x.bin").read_bytes() == b"x"


def test_select_messages_are_exact(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/sel")
    names = [f"f{i:02d}.bin" for i in range(13)]
    upload(tree(tmp_path / "src", {n: b"n" for n in names}), url, client, SHA, progress=False)
    for n in names[1:]:
        s3.delete_object(Bucket=bucket, Key=f"sel/{n}")
    with pytest.raises(StorageError) as e:
        download(url, tmp_path / "dst", client, SHA, progress=False)
    assert str(e.value) == (
        f"s3://{bucket}/sel: 12 file(s) the manifest lists are not on S3: {', '.join(names[1:11])}, ... (2 more) "
        f"(`mltrain data verify s3://{bucket}/sel` lists every problem); nothing downloaded"
    )
    s3.put_object(Bucket=bucket, Key="raw/x", Body=b"x")
    s3.put_object(Bucket=bucket, Key="raw/y", Body=b"y")
    with pytest.raises(StorageError) as e:
        download(parse_s3_url(f"s3://{bucket}/raw"), tmp_path / "dst", client, SHA, progress=False)
    assert str(e.value) == (
        f"s3://{bucket}/raw: no {MANIFEST_NAME}, so nothing under it can be checked against an upload's hashes; "
        f"rerun with --unlisted to download its 2 object(s), {HOW}"
    )
    (tmp_path / "empty").mkdir()
    upload(tmp_path / "empty", parse_s3_url(f"s3://{bucket}/none"), client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="none/x", Body=b"x")
    s3.put_object(Bucket=bucket, Key="none/y", Body=b"y")
    with pytest.raises(StorageError) as e:
        download(parse_s3_url(f"s3://{bucket}/none"), tmp_path / "dst", client, SHA, progress=False)
    assert str(e.value) == (
        f"s3://{bucket}/none: none of its 2 object(s) is in its manifest; --unlisted downloads them, {HOW}"
    )
    assert not (tmp_path / "dst").exists()


def test_download_of_an_empty_bucket_does_nothing(tmp_path, client, bucket):
    s = download(parse_s3_url(f"s3://{bucket}"), tmp_path / "dst", client, SHA, progress=False)
    assert (s.files, s.transferred, s.unlisted) == (0, 0, [])


def test_unlisted_names_pick_exactly_those_objects(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/un")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    for k in ("x.bin", "y.bin", "z.bin"):
        s3.put_object(Bucket=bucket, Key=f"un/{k}", Body=k.encode(), ChecksumAlgorithm="SHA256")
    s = download(url, tmp_path / "dst", client, SHA, progress=False, unlisted=["y.bin", "nope.bin"])
    assert (s.files, s.unlisted, s.bytes_total) == (2, ["x.bin", "z.bin"], 1 + 5)
    assert files_under(tmp_path / "dst") == {"a.bin": b"a", "y.bin": b"y.bin"}


# --------------------------------------------------------------------------- download: temps and what is kept


def _temp_of(name: str, pid: int = 4242) -> str:
    """The temp name a killed download of `name` leaves: `.<name>.<pid>.mltrain-tmp`, the name shortened
    past 200 characters to its first 150 and 16 hex digits of its sha256 (s3transfer's suffix must fit)."""
    stem = name if len(name) <= 200 else f"{name[:150]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return f".{stem}.{pid}.mltrain-tmp"


@pytest.mark.parametrize("length", [200, 201])
def test_a_killed_runs_complete_temp_of_a_long_name_is_kept(tmp_path, client, s3, bucket, length):
    name = "n" * (length - 4) + ".bin"
    url = parse_s3_url(f"s3://{bucket}/long")
    upload(tree(tmp_path / "src", {name: b"L" * 50}), url, client, SHA, progress=False)
    dst = tree(tmp_path / "dst", {_temp_of(name): b"L" * 50})
    s = download(url, dst, client, SHA, progress=False)
    assert (s.recovered, s.transferred, s.skipped) == (1, 0, 0)
    assert files_under(dst) == {name: b"L" * 50}


def test_download_removes_only_our_temps(tmp_path, client, s3, bucket):
    """Files that look like temps but are not named the way ours are, and a directory, are the user's."""
    url = parse_s3_url(f"s3://{bucket}/tt")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 5}), url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="tt/u.bin", Body=b"u")  # unlisted: its temp is removed all the same
    mine = {".a.bin.mltrain-tmp": b"no pid", ".notes.mltrain-tmp.txt": b"n", ".d.1.mltrain-tmp/in.txt": b"i"}
    dst = tree(tmp_path / "dst", {**mine, ".a.bin.9.mltrain-tmp": b"a" * 4, "s/.u.bin.9.mltrain-tmp": b"u"})
    dst.joinpath(".u.bin.9.mltrain-tmp").write_bytes(b"u")
    s = download(url, dst, client, SHA, progress=False)
    assert (s.recovered, s.transferred) == (0, 1)
    assert files_under(dst) == {**mine, "a.bin": b"a" * 5}


def test_single_object_download_touches_only_its_own_temps(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/so")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 5, "b.bin": b"b" * 5}), url, client, SHA, progress=False)
    dst = tree(tmp_path / "dst", {".a.bin.7.mltrain-tmp": b"a", ".b.bin.7.mltrain-tmp": b"b" * 5})
    s = download(url.child("a.bin"), dst, client, SHA, progress=False)
    assert (s.recovered, s.transferred) == (0, 1)
    assert files_under(dst) == {".b.bin.7.mltrain-tmp": b"b" * 5, "a.bin": b"a" * 5}
    # its own complete temp is kept, the other one is still not touched
    (dst / "a.bin").unlink()
    (dst / ".a.bin.8.mltrain-tmp").write_bytes(b"a" * 5)
    s = download(url.child("a.bin"), dst, client, SHA, progress=False)
    assert (s.recovered, s.transferred, s.skipped, s.bytes_transferred) == (1, 0, 0, 0)
    assert files_under(dst) == {".b.bin.7.mltrain-tmp": b"b" * 5, "a.bin": b"a" * 5}
    # into a directory that does not exist: no temps to look for
    assert download(url.child("a.bin"), tmp_path / "no" / "a.bin", client, SHA, progress=False).transferred == 1


def test_a_good_target_wins_over_a_temp_and_the_temp_goes(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/gt")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 5}), url, client, SHA, progress=False)
    dst = tree(tmp_path / "dst", {"a.bin": b"a" * 5, ".a.bin.3.mltrain-tmp": b"a" * 5})
    s = download(url, dst, client, SHA, progress=False)
    assert (s.recovered, s.transferred, s.skipped) == (0, 0, 1)
    assert files_under(dst) == {"a.bin": b"a" * 5}


def test_recovered_unlisted_temp_is_checked_against_s3s_checksum(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/ru")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    s3.put_object(Bucket=bucket, Key="ru/u.bin", Body=b"u" * 9, ChecksumAlgorithm="SHA256")
    dst = tree(tmp_path / "dst", {".u.bin.5.mltrain-tmp": b"u" * 9, "a.bin": b"a"})
    s = download(url, dst, client, SHA, progress=False, unlisted=True)
    assert (s.recovered, s.transferred, s.skipped, s.unchecked) == (1, 0, 1, [])
    dst = tree(tmp_path / "dst2", {".u.bin.5.mltrain-tmp": b"U" * 9, "a.bin": b"a"})  # wrong bytes
    s = download(url, dst, client, SHA, progress=False, unlisted=True)
    assert (s.recovered, s.transferred) == (0, 1) and files_under(dst) == {"a.bin": b"a", "u.bin": b"u" * 9}


# --------------------------------------------------------------------------- download: what is checked


def test_mismatched_downloads_replace_nothing_and_name_the_first_10(tmp_path, client, s3, bucket):
    names = [f"f{i:02d}.bin" for i in range(12)]
    url = parse_s3_url(f"s3://{bucket}/bad")
    upload(tree(tmp_path / "src", {n: n.encode() for n in names}), url, client, SHA, progress=False)
    forge_manifest_sha(s3, bucket, "bad", names[:11])
    dst = tree(tmp_path / "dst", {"f00.bin": b"old"})
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False)
    assert str(e.value) == (
        f"s3://{bucket}/bad: downloaded files do not match: "
        + "; ".join(f"{n} (sha256 differs from the manifest)" for n in names[:10])
        + " (nothing replaced)"
    )
    assert files_under(dst) == {"f00.bin": b"old"}


def test_a_manifest_size_that_disagrees_is_a_mismatch(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/sz")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 10}), url, client, SHA, progress=False)
    raw = json.loads(s3.get_object(Bucket=bucket, Key=f"sz/{MANIFEST_NAME}")["Body"].read())
    raw["files"]["a.bin"]["size"] = 11
    s3.put_object(Bucket=bucket, Key=f"sz/{MANIFEST_NAME}", Body=json.dumps(raw).encode())
    dst = tree(tmp_path / "dst", {"a.bin": b"a" * 10})  # the right bytes, but not what the manifest says
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False)
    assert (
        str(e.value)
        == f"s3://{bucket}/sz: downloaded files do not match: a.bin (sha256 differs from the manifest) (nothing replaced)"
    )


def test_a_body_that_does_not_match_s3s_checksum_is_refused_by_a_validating_client(tmp_path, s3_env, s3, bucket):
    client = make_client(S3Options(s3_env["AWS_ENDPOINT_URL"]), validate_responses=True)
    url = parse_s3_url(f"s3://{bucket}/fx")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    forged = base64.b64encode(zlib.crc32(b"other").to_bytes(4, "big")).decode()
    s3.put_object(Bucket=bucket, Key="fx/x.bin", Body=b"x" * 9, ChecksumAlgorithm="CRC32", ChecksumCRC32=forged)
    dst = tmp_path / "dst"
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False, unlisted=True)
    assert str(e.value) == (
        f"s3://{bucket}/fx: downloaded files do not match: x.bin (bytes differ from the checksum S3 stores) "
        "(nothing replaced)"
    )
    assert not [p for p in dst.rglob("*") if p.is_file()]


def test_unlisted_objects_without_a_checksum_are_said_to_be_checked_by_size(tmp_path, s3_env, client, s3, bucket):
    import boto3
    from botocore.config import Config

    plain = boto3.client(
        "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], config=Config(request_checksum_calculation="when_required")
    )
    url = parse_s3_url(f"s3://{bucket}/nc")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    for k in ("z.bin", "m.bin", "b.bin"):
        plain.put_object(Bucket=bucket, Key=f"nc/{k}", Body=k.encode())
    s = download(url, tmp_path / "dst", client, SHA, progress=False, unlisted=True)
    assert (s.transferred, s.unchecked, s.verified) == (4, ["b.bin", "m.bin", "z.bin"], False)
    assert s.line().endswith(
        "; checksums verified except 3 file(s) checked by size only (S3 stores no whole-object checksum for them): "
        "b.bin, m.bin, z.bin"
    )


def test_download_cannot_write_where_a_directory_stands(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/cw")
    upload(tree(tmp_path / "src", {"a.bin": b"a", "b.bin": b"b"}), url, client, SHA, progress=False)
    dst = tree(tmp_path / "dst", {"a.bin/inside.txt": b"i"})
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False)
    assert str(e.value) == f"{dst}: cannot write: Is a directory"
    assert files_under(dst) == {"a.bin/inside.txt": b"i"}  # and no temp left


def test_download_cannot_read_a_local_copy(tmp_path, client, s3, bucket, monkeypatch):
    """Tests run as root, who reads any file: a refused read is made by the digest raising EACCES."""
    url = parse_s3_url(f"s3://{bucket}/cr")
    upload(tree(tmp_path / "src", {"a.bin": b"a"}), url, client, SHA, progress=False)
    dst = tree(tmp_path / "dst", {"a.bin": b"a"})

    def refuse(path, part_size, algorithm="SHA256"):
        raise PermissionError(errno.EACCES, "Permission denied", str(path))

    monkeypatch.setattr(transfer, "digest_file", refuse)
    with pytest.raises(StorageError) as e:
        download(url, dst, client, SHA, progress=False)
    assert str(e.value) == f"{dst}: cannot read: Permission denied"


# --------------------------------------------------------------------------- the bar, sync


def _console():
    from rich.console import Console

    buf = io.StringIO()
    return Console(file=buf, width=200), buf


def test_the_bar_names_the_direction_and_counts_skipped_bytes_as_done(tmp_path, client, s3, bucket):
    url = parse_s3_url(f"s3://{bucket}/bar")
    src = tree(tmp_path / "src", {"a.bin": b"a" * 2048, "b.bin": b"b" * 1024})
    con, buf = _console()
    upload(src, url, client, SHA, console=con)
    assert buf.getvalue().startswith(f"upload -> s3://{bucket}/bar ") and " 3.0/3.0 KiB " in buf.getvalue()
    con, buf = _console()
    upload(src, url, client, SHA, console=con)  # all skipped: the bar is full all the same
    assert " 3.0/3.0 KiB " in buf.getvalue()
    dst = tree(tmp_path / "dst", {"a.bin": b"a" * 2048})
    con, buf = _console()
    download(url, dst, client, SHA, console=con)
    assert buf.getvalue().startswith(f"download <- s3://{bucket}/bar ") and " 3.0/3.0 KiB " in buf.getvalue()
    con, buf = _console()
    download(url, dst, client, SHA, console=con, progress=False)
    assert buf.getvalue() == ""


def test_sync_picks_the_direction_and_passes_every_option(tmp_path, s3_env, s3, bucket, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    opts = S3Options(s3_env["AWS_ENDPOINT_URL"])
    tree(tmp_path / "src", {"a.bin": b"a", "b.bin": b"b"})
    url = f"s3://{bucket}/sy"
    s = sync("~/src", url, opts, SHA, progress=False)
    assert (s.direction, s.transferred, s.source) == ("upload", 2, str(tmp_path / "src"))
    (tmp_path / "src" / "b.bin").unlink()
    with pytest.raises(StorageError, match="would delete 1 file"):
        sync("~/src", url, opts, SHA, delete=True, progress=False)
    con, buf = _console()
    s = sync("~/src", url, opts, SHA, delete=True, yes=True, console=con)
    assert s.deleted == ["b.bin"] and buf.getvalue().startswith("upload -> ")

    s3.put_object(Bucket=bucket, Key="sy/u.bin", Body=b"u", ChecksumAlgorithm="SHA256")
    tree(tmp_path / "dst", {"stray": b"s"})
    with pytest.raises(StorageError, match="would delete 1 file"):
        sync(url, "~/dst", opts, SHA, delete=True, progress=False)
    con, buf = _console()
    s = sync(url, "~/dst", opts, SHA, delete=True, yes=True, unlisted=True, console=con)
    assert (s.direction, s.dest, s.deleted, s.transferred) == ("download", str(tmp_path / "dst"), ["stray"], 2)
    assert buf.getvalue().startswith("download <- ") and files_under(tmp_path / "dst") == {"a.bin": b"a", "u.bin": b"u"}


def test_sync_downloads_trust_the_manifest_over_a_wrong_stored_checksum(tmp_path, s3_env, client, s3, bucket):
    """A download hashes every file against the manifest itself, so botocore does not validate the body
    (one hash pass): an object whose bytes are right is downloaded even where the stored checksum is not."""
    url = parse_s3_url(f"s3://{bucket}/tr")
    upload(tree(tmp_path / "src", {"a.bin": b"a" * 9}), url, client, SHA, progress=False)
    s3.put_object(
        Bucket=bucket, Key="tr/a.bin", Body=b"a" * 9, ChecksumAlgorithm="SHA256", ChecksumSHA256=b64_sha256(b"x")
    )
    s = sync(str(url), str(tmp_path / "dst"), S3Options(s3_env["AWS_ENDPOINT_URL"]), SHA, progress=False)
    assert s.transferred == 1 and (tmp_path / "dst" / "a.bin").read_bytes() == b"a" * 9


def test_sync_errors_are_exact(tmp_path, s3_env, bucket):
    opts = S3Options(s3_env["AWS_ENDPOINT_URL"])
    for a, b in (("x", "y"), (f"s3://{bucket}/a", f"s3://{bucket}/b")):
        with pytest.raises(StorageError) as e:
            sync(a, b, opts)
        assert str(e.value) == f"{a} -> {b}: exactly one side must be an s3:// URL"
    with pytest.raises(StorageError) as e:
        sync(str(tmp_path), f"s3://{bucket}/p", opts, unlisted=True)
    assert str(e.value) == "--unlisted applies to downloads (s3:// source): an upload sends every local file"
    with pytest.raises(StorageError) as e:
        sync(str(tmp_path / "nope"), f"s3://{bucket}/p", opts)
    assert str(e.value) == f"{tmp_path / 'nope'}: no such file or directory"


# --------------------------------------------------------------------------- the summary line


def test_names_are_listed_up_to_10():
    ten = [f"e{i}" for i in range(10)]
    s = TransferSummary("download", "s3://b/p", "d", unlisted=ten)
    assert s.line().endswith(
        f"; 10 object(s) not in the manifest skipped: {', '.join(ten)} (--unlisted downloads them)"
    )
    s = TransferSummary("download", "s3://b/p", "d", unlisted=[*ten, "e10"])
    assert s.line().endswith(f": {', '.join(ten)}, ... (1 more) (--unlisted downloads them)")


def test_download_line_without_extras():
    s = TransferSummary("download", "s3://b/p", "d", transferred=2, skipped=1, bytes_transferred=3 * MiB,
                        transfer_seconds=2.0, seconds=3.0, deleted=["x"])  # fmt: skip
    assert s.line() == (
        "download: 2 file(s) downloaded, 1 already there; 3.0 MiB in 2.0s (1.5 MiB/s), 3.0s in all; "
        "checksums verified; 1 deleted"
    )
    assert TransferSummary("upload", "a", "b").as_dict() == {
        "direction": "upload", "source": "a", "dest": "b", "files": 0, "transferred": 0, "skipped": 0,
        "bytes_total": 0, "bytes_transferred": 0, "recovered": 0, "unlisted": [], "unchecked": [], "deleted": [],
        "aborted_multipart_uploads": 0, "checksum_algorithm": "", "verified": False, "transfer_seconds": 0.0,
        "seconds": 0.0, "mib_per_s": None,
    }  # fmt: skip


# --------------------------------------------------------------------------- upload: failures and the after-check


def test_a_refused_multipart_listing_is_one_line_naming_the_destination(tmp_path, client, bucket):
    """moto grants every request: a client whose ListMultipartUploads is refused stands in for a missing
    s3:ListBucketMultipartUploads permission."""
    from botocore.exceptions import ClientError

    class Refusing:
        def __getattr__(self, name):
            return getattr(client, name)

        def get_paginator(self, op):
            if op == "list_multipart_uploads":
                raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "ListMultipartUploads")
            return client.get_paginator(op)

    with pytest.raises(StorageError) as e:
        upload(
            tree(tmp_path / "src", {"a.bin": b"a"}), parse_s3_url(f"s3://{bucket}/p"), Refusing(), SHA, progress=False
        )
    assert str(e.value) == (
        f"s3://{bucket}/p: access denied (check the credentials' IAM permissions and the bucket policy)"
    )


def test_a_file_that_vanishes_after_hashing_is_named(tmp_path, client, bucket, monkeypatch):
    src = tree(tmp_path / "src", {"a.bin": b"a"})
    real = transfer.digest_file

    def digest_then_remove(path, part_size, algorithm="SHA256"):
        d = real(path, part_size, algorithm)
        Path(path).unlink()
        return d

    monkeypatch.setattr(transfer, "digest_file", digest_then_remove)
    with pytest.raises(StorageError) as e:
        upload(src, parse_s3_url(f"s3://{bucket}/p"), client, SHA, progress=False)
    assert str(e.value) == f"{src}: cannot read during upload: No such file or directory"


def test_hash_workers_bound_the_files_read_at_once(tmp_path, client, bucket, monkeypatch):
    src = tree(tmp_path / "src", {f"f{i}": b"x" for i in range(6)})
    counting, peak = counting_overlap(transfer.digest_file)
    monkeypatch.setattr(transfer, "digest_file", counting)
    settings = TransferSettings(checksum="sha256", concurrency=4, hash_workers=1)
    assert upload(src, parse_s3_url(f"s3://{bucket}/hw"), client, settings, progress=False).transferred == 6
    assert peak[0] == 1


def test_a_sha256_multipart_upload_that_lands_right_is_verified(tmp_path, client, s3, bucket):
    data = os.urandom(6 * MiB)
    settings = TransferSettings(checksum="sha256", part_size=5 * MiB, threshold=5 * MiB)
    s = upload(
        tree(tmp_path / "src", {"big.bin": data}), parse_s3_url(f"s3://{bucket}/mp"), client, settings, progress=False
    )
    assert (s.transferred, s.verified) == (1, True)
    entry = manifest_of(s3, bucket, "mp")["big.bin"]
    assert entry["part_size"] == 5 * MiB and entry["sha256"] == sha(data) and entry["s3_checksum"].endswith("-2")


def test_uploaded_objects_that_do_not_match_name_the_first_10(tmp_path, client, s3, bucket, monkeypatch):
    """The after-check of SHA256 multipart uploads, made cheap: the digest claims a multipart composite for
    small files, which botocore then sends in one PUT with the checksum of their real bytes."""
    import dataclasses

    real = transfer.digest_file

    def claimed(path, part_size, algorithm="SHA256"):
        return dataclasses.replace(real(path, part_size, algorithm), part_size=5 * MiB, s3_checksum="SHA256:bogus-2")

    monkeypatch.setattr(transfer, "digest_file", claimed)
    names = [f"f{i:02d}" for i in range(11)]
    with pytest.raises(StorageError) as e:
        upload(
            tree(tmp_path / "src", {n: n.encode() for n in names}),
            parse_s3_url(f"s3://{bucket}/ac"),
            client,
            SHA,
            progress=False,
        )
    assert str(e.value) == f"s3://{bucket}/ac: uploaded objects do not match the local files: " + "; ".join(
        f"{n} (expected SHA256:bogus-2, S3 has SHA256:{b64_sha256(n.encode())})" for n in names[:10]
    )
    assert MANIFEST_NAME not in str(keys_under(s3, bucket, "ac/"))


def test_with_the_default_crc64nvme_manifest_the_same_size_is_not_the_same_bytes(tmp_path, client, s3, bucket):
    """The manifest of an upload with CRC64NVME (the default where awscrt is installed) records each file's
    full-object CRC, and a download checks against it alone. A file already in place, or a temp a killed
    run left, is kept only when its CRC matches (same size, other bytes: downloaded again); an object whose
    bytes changed behind the manifest is refused, naming the file, and nothing is replaced."""
    pytest.importorskip("awscrt")
    crc = TransferSettings(checksum="crc64nvme", concurrency=4, hash_workers=2)
    url = parse_s3_url(f"s3://{bucket}/crc")
    want = {"a.bin": b"a" * 10, "b.bin": b"b" * 10, "c.bin": b"c" * 10}
    upload(tree(tmp_path / "src", want), url, client, crc, progress=False)
    assert all(e["s3_checksum"].startswith("CRC64NVME:") for e in manifest_of(s3, bucket, "crc").values())
    dst = tree(tmp_path / "dst", {"a.bin": b"a" * 10, "b.bin": b"X" * 10, _temp_of("c.bin"): b"Y" * 10})
    s = download(url, dst, client, crc, progress=False)
    assert (s.skipped, s.recovered, s.transferred, s.verified) == (1, 0, 2, True)
    assert files_under(dst) == want

    s3.put_object(Bucket=bucket, Key="crc/b.bin", Body=b"Z" * 10)  # same size, other bytes, old manifest
    with pytest.raises(StorageError) as e:
        download(url, tmp_path / "dst2", client, crc, progress=False)
    assert str(e.value) == (
        f"s3://{bucket}/crc: downloaded files do not match: b.bin (crc64nvme differs from the manifest) "
        "(nothing replaced)"
    )
    assert not [p for p in (tmp_path / "dst2").rglob("*") if p.is_file()]
