"""`mltrain data upload/download/sync/verify` against moto's real S3 server over HTTP."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from moto_fixture import run_cli as cli
from tests.helpers import mltrain_cmd

MiB = 1 << 20


def cli_subprocess(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(mltrain_cmd(*args), env=env, capture_output=True, text=True, timeout=120)


def make_tree(root: Path, n_small: int, small_bytes: int, big_bytes: int, seed: int = 0) -> int:
    """Random files (incompressible, all different) in nested dirs; returns the total size."""
    import random

    rng = random.Random(seed)
    total = 0
    for i in range(n_small):
        p = root / f"d{i % 4}" / f"s{i:03d}.bin"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(rng.randbytes(small_bytes + i))
        total += small_bytes + i
    if big_bytes:
        (root / "z_big.bin").write_bytes(rng.randbytes(big_bytes))
        total += big_bytes
    return total


def summary(proc: subprocess.CompletedProcess) -> dict:
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_round_trip_few_hundred_mb_byte_identical(tmp_path, s3_env, s3, bucket):
    src = tmp_path / "src"
    total = make_tree(src, n_small=40, small_bytes=2 * MiB, big_bytes=70 * MiB)  # ~157 MB, one multipart file
    url = f"s3://{bucket}/corpus/v1"
    up = summary(cli_subprocess(s3_env, "data", "upload", str(src), url, "--json"))
    assert up["files"] == 41 and up["transferred"] == 41 and up["bytes_transferred"] == total
    assert up["verified"] and up["checksum_algorithm"] in ("SHA256", "CRC64NVME")

    head = s3.head_object(Bucket=bucket, Key="corpus/v1/z_big.bin", ChecksumMode="ENABLED")
    assert head["ETag"].strip('"').endswith("-5")  # 70 MiB in 16 MiB parts: really multipart
    manifest = json.loads(s3.get_object(Bucket=bucket, Key="corpus/v1/.mltrain-manifest.json")["Body"].read())
    assert len(manifest["files"]) == 41 and manifest["total_bytes"] == total
    assert manifest["files"]["z_big.bin"]["part_size"] == 16 * MiB

    ver = cli_subprocess(s3_env, "data", "verify", url, "--deep")
    assert ver.returncode == 0, ver.stdout + ver.stderr
    assert "41 objects" in ver.stdout and "OK" in ver.stdout

    again = summary(cli(s3_env, "data", "upload", str(src), url, "--json"))  # nothing changed: nothing sent
    assert again["transferred"] == 0 and again["skipped"] == 41

    dst = tmp_path / "dst"
    down = summary(cli(s3_env, "data", "download", url, str(dst), "--json"))
    assert down["transferred"] == 41 and down["bytes_transferred"] == total
    cmp = filecmp.dircmp(src, dst)
    assert not cmp.left_only and not cmp.right_only
    for rel in [p.relative_to(src) for p in src.rglob("*") if p.is_file()]:
        assert filecmp.cmp(src / rel, dst / rel, shallow=False), rel
    assert not list(dst.rglob("*.mltrain-tmp"))


def test_sigkill_midway_then_rerun_sends_only_the_rest(tmp_path, s3_env, s3, bucket):
    src = tmp_path / "src"
    total = make_tree(src, n_small=20, small_bytes=MiB, big_bytes=60 * MiB)
    url = f"s3://{bucket}/resume"
    args = ["data", "upload", str(src), url, "--json", "--concurrency", "2", "--part-size-mib", "5"]
    proc = subprocess.Popen(mltrain_cmd(*args), env=s3_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    killed = False
    while time.monotonic() < deadline and proc.poll() is None:
        ups = s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
        if ups and s3.list_parts(Bucket=bucket, Key=ups[0]["Key"], UploadId=ups[0]["UploadId"]).get("Parts"):
            proc.send_signal(signal.SIGKILL)
            killed = True
            break
        time.sleep(0.01)
    proc.wait(timeout=30)
    proc.stdout.close()
    proc.stderr.close()
    assert killed, "the upload finished before it could be killed midway"
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "a killed multipart upload should be left over"
    assert "Contents" not in s3.list_objects_v2(Bucket=bucket, Prefix="resume/.mltrain-manifest.json")

    rerun = summary(cli(s3_env, *args))
    assert rerun["skipped"] >= 1 and rerun["transferred"] < rerun["files"] == 21
    assert rerun["bytes_transferred"] < total
    assert rerun["aborted_multipart_uploads"] >= 1
    assert not s3.list_multipart_uploads(Bucket=bucket).get("Uploads"), "orphaned multipart uploads left"
    ver = cli(s3_env, "data", "verify", url, "--deep")
    assert ver.returncode == 0, ver.stdout + ver.stderr


def test_verify_names_overwritten_deleted_and_extra(tmp_path, s3_env, s3, bucket):
    src = tmp_path / "src"
    make_tree(src, n_small=6, small_bytes=1000, big_bytes=0)
    url = f"s3://{bucket}/v"
    summary(cli(s3_env, "data", "upload", str(src), url, "--json"))
    assert cli(s3_env, "data", "verify", url).returncode == 0
    s3.put_object(Bucket=bucket, Key="v/d0/s000.bin", Body=b"x" * 1000, ChecksumAlgorithm="SHA256")  # overwritten
    s3.delete_object(Bucket=bucket, Key="v/d1/s001.bin")  # deleted
    s3.put_object(Bucket=bucket, Key="v/d2/new.bin", Body=b"extra")  # extra
    r = cli(s3_env, "data", "verify", url)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISMATCH  d0/s000.bin" in r.stdout
    assert "MISSING   d1/s001.bin" in r.stdout
    assert "EXTRA     d2/new.bin" in r.stdout
    assert "1 missing, 1 extra, 1 mismatched" in r.stdout
    assert "Traceback" not in r.stderr


def test_deep_verify_catches_bytes_behind_a_forged_checksum(tmp_path, s3_env, s3, bucket):
    """moto stores whatever checksum the client claims: only hashing the bytes catches this one."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.bin").write_bytes(b"a" * 5000)
    url = f"s3://{bucket}/f"
    summary(cli(s3_env, "data", "upload", str(src), url, "--json", "--checksum", "sha256"))
    good = s3.head_object(Bucket=bucket, Key="f/a.bin", ChecksumMode="ENABLED")["ChecksumSHA256"]
    s3.put_object(Bucket=bucket, Key="f/a.bin", Body=b"b" * 5000, ChecksumAlgorithm="SHA256", ChecksumSHA256=good)
    assert s3.head_object(Bucket=bucket, Key="f/a.bin", ChecksumMode="ENABLED")["ChecksumSHA256"] == good
    assert cli(s3_env, "data", "verify", url).returncode == 0  # the shallow check trusts the stored checksum
    deep = cli(s3_env, "data", "verify", url, "--deep")
    assert deep.returncode == 1 and "MISMATCH  a.bin: content" in deep.stdout

    # a download never puts those bytes at a real path, and keeps the previous good file
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "a.bin").write_bytes(b"old")
    r = cli(s3_env, "data", "download", url, str(dst))
    assert r.returncode == 1 and "a.bin" in r.stderr and "match" in r.stderr
    assert (dst / "a.bin").read_bytes() == b"old"
    assert [p.name for p in dst.iterdir()] == ["a.bin"]


def test_sync_delete_lists_and_needs_yes(tmp_path, s3_env, s3, bucket):
    src = tmp_path / "src"
    make_tree(src, n_small=4, small_bytes=100, big_bytes=0)
    url = f"s3://{bucket}/sync"
    summary(cli(s3_env, "data", "sync", str(src), url, "--json"))
    (src / "d1" / "s001.bin").unlink()
    (src / "d0" / "s000.bin").write_bytes(b"changed")
    r = cli(s3_env, "data", "sync", str(src), url, "--delete")
    assert r.returncode == 1 and "would delete 1 file(s)" in r.stderr and "d1/s001.bin" in r.stderr
    assert s3.head_object(Bucket=bucket, Key="sync/d1/s001.bin")  # still there
    out = summary(cli(s3_env, "data", "sync", str(src), url, "--delete", "--yes", "--json"))
    assert out["deleted"] == ["d1/s001.bin"] and out["transferred"] == 1 and out["skipped"] == 2
    assert cli(s3_env, "data", "verify", url).returncode == 0

    dst = tmp_path / "dst"
    summary(cli(s3_env, "data", "sync", url, str(dst), "--json"))
    (dst / "stray.txt").write_text("local only")
    r = cli(s3_env, "data", "sync", url, str(dst), "--delete")
    assert r.returncode == 1 and "stray.txt" in r.stderr and (dst / "stray.txt").exists()
    out = summary(cli(s3_env, "data", "sync", url, str(dst), "--delete", "--yes", "--json"))
    assert out["deleted"] == ["stray.txt"] and out["transferred"] == 0 and not (dst / "stray.txt").exists()


def _one_clear_line(r: subprocess.CompletedProcess, *needles: str) -> None:
    assert r.returncode != 0, r.stdout + r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


def test_errors_are_one_clear_line_and_write_nothing(tmp_path, s3_env, bucket, moto_s3_with_auth):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    dst = tmp_path / "dst"

    _one_clear_line(
        cli(s3_env, "data", "upload", str(src), "s3://no-such-bucket-x/p"), "no-such-bucket-x", "does not exist"
    )
    _one_clear_line(cli(s3_env, "data", "download", "s3://no-such-bucket-x/p", str(dst)), "does not exist")
    _one_clear_line(cli(s3_env, "data", "upload", str(tmp_path / "nope"), f"s3://{bucket}/p"), "nope", "no such file")
    _one_clear_line(cli(s3_env, "data", "upload", f"s3://{bucket}/p", str(dst)), "expected `mltrain data upload LOCAL")

    s = socket_free_port()
    dead = {**s3_env, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{s}", "AWS_MAX_ATTEMPTS": "1"}
    _one_clear_line(cli(dead, "data", "download", f"s3://{bucket}/p", str(dst)), "cannot reach the S3 endpoint")
    _one_clear_line(cli(dead, "data", "upload", str(src), f"s3://{bucket}/p"), "cannot reach the S3 endpoint")

    auth = {**s3_env, "AWS_ENDPOINT_URL": moto_s3_with_auth}
    _one_clear_line(cli(auth, "data", "upload", str(src), f"s3://{bucket}/p"), "wrong credentials")
    _one_clear_line(cli(auth, "data", "verify", f"s3://{bucket}/p"), "wrong credentials")
    assert not dst.exists()


def socket_free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for k in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    os.environ.setdefault("COLUMNS", "120")


def test_single_file_upload_and_single_object_download(tmp_path, s3_env, s3, bucket):
    f = tmp_path / "one.bin"
    f.write_bytes(os.urandom(3000))
    url = f"s3://{bucket}/single"
    summary(cli(s3_env, "data", "upload", str(f), url, "--json"))
    summary(cli(s3_env, "data", "upload", str(tmp_path / "one.bin"), url, "--json"))  # again: skipped
    assert cli(s3_env, "data", "verify", url).returncode == 0
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "keep.txt").write_text("unrelated")
    down = summary(cli(s3_env, "data", "download", f"{url}/one.bin", str(dst), "--json"))
    assert down["transferred"] == 1 and (dst / "one.bin").read_bytes() == f.read_bytes()
    r = cli(s3_env, "data", "sync", f"{url}/one.bin", str(dst), "--delete", "--yes")
    assert r.returncode == 1 and "--delete needs a prefix" in r.stderr and (dst / "keep.txt").exists()
    r = cli(s3_env, "data", "sync", str(f), url, "--delete", "--yes")
    assert r.returncode == 1 and "--delete needs a directory" in r.stderr


def test_download_into_good_copies_names_an_unlisted_object_and_leaves_it(tmp_path, s3_env, s3, bucket):
    src = tmp_path / "src"
    make_tree(src, n_small=3, small_bytes=1000, big_bytes=0)
    url = f"s3://{bucket}/x"
    summary(cli(s3_env, "data", "upload", str(src), url, "--json"))
    dst = tmp_path / "dst"
    summary(cli(s3_env, "data", "download", url, str(dst), "--json"))
    s3.put_object(Bucket=bucket, Key="x/d9/extra.bin", Body=b"extra")  # what `verify` calls EXTRA

    r = cli(s3_env, "data", "download", url, str(dst))
    assert r.returncode == 0, r.stdout + r.stderr
    line = r.stdout.strip().splitlines()[-1]
    assert line.startswith("download: 0 file(s) downloaded, 3 already there; 0.0 MiB in "), line
    assert (
        "checksums verified; 1 object(s) not in the manifest skipped: d9/extra.bin (--unlisted downloads them)" in line
    )
    assert "sent" not in line and not (dst / "d9").exists()

    got = summary(cli(s3_env, "data", "download", url, str(dst), "--unlisted", "--json"))
    assert (got["transferred"], got["skipped"], got["unlisted"]) == (1, 3, [])
    assert (dst / "d9" / "extra.bin").read_bytes() == b"extra"
    r = cli(s3_env, "data", "upload", str(src), url, "--unlisted")
    assert r.returncode == 2 and "--unlisted" in r.stderr  # an upload has no such option


def test_sigkill_during_download_then_rerun_keeps_complete_files_and_removes_every_temp(tmp_path, s3_env, s3, bucket):
    """A real `kill -9` while s3transfer writes the big file: the small ones sit complete in our temps
    (renamed only once all are checked), the big one in s3transfer's own suffixed temp."""
    src = tmp_path / "src"
    total = make_tree(src, n_small=8, small_bytes=MiB, big_bytes=80 * MiB)
    url = f"s3://{bucket}/kd"
    summary(cli(s3_env, "data", "upload", str(src), url, "--json"))
    dst = tmp_path / "dst"
    args = ["data", "download", url, str(dst), "--json", "--concurrency", "1", "--part-size-mib", "5"]
    proc = subprocess.Popen(mltrain_cmd(*args), env=s3_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, seen = time.monotonic() + 90, []
    while time.monotonic() < deadline and proc.poll() is None:
        seen = [p.name for p in dst.rglob("*.mltrain-tmp*")] if dst.is_dir() else []
        if any(n.startswith(".z_big.bin.") and not n.endswith(".mltrain-tmp") for n in seen) and any(
            n.endswith(".mltrain-tmp") for n in seen
        ):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, f"the download finished before it could be killed midway ({seen})"
    left = [p.name for p in dst.rglob("*") if p.is_file()]
    assert left and all(".mltrain-tmp" in n for n in left), left  # nothing at a real path

    rerun = summary(cli(s3_env, *args))
    assert (
        rerun["recovered"] >= 1
        and rerun["transferred"] == rerun["files"] - rerun["recovered"] == 9 - rerun["recovered"]
    )
    assert rerun["bytes_transferred"] < total and rerun["verified"]
    assert not [p for p in dst.rglob("*") if "mltrain-tmp" in p.name]
    for rel in [p.relative_to(src) for p in src.rglob("*") if p.is_file()]:
        assert filecmp.cmp(src / rel, dst / rel, shallow=False), rel


def test_progress_bar_and_summary_give_one_rate_in_mib(tmp_path, s3_env, s3, bucket):
    """The bar and the summary line print the same figure, bytes moved (not skipped) per second, in MiB/s."""
    import re

    src = tmp_path / "src"
    make_tree(src, n_small=6, small_bytes=2 * MiB, big_bytes=0)
    url = f"s3://{bucket}/rate"
    env = {**s3_env, "COLUMNS": "250", "TTY_COMPATIBLE": "1", "TTY_INTERACTIVE": "0"}
    summary(cli(env, "data", "upload", str(src / "d0"), f"{url}/d0", "--json"))  # these are skipped below
    for args in (["upload", str(src), url], ["download", url, str(tmp_path / "dst")]):
        r = cli(env, "data", *args)
        assert r.returncode == 0, r.stdout + r.stderr
        line = r.stdout.strip().splitlines()[-1]
        assert "MB/s" not in r.stderr + r.stdout and " sent" not in line, r.stderr + line
        bar = re.findall(r"([\d.]+) MiB/s", r.stderr)
        said = re.search(r"([\d.]+) MiB in ([\d.]+)s \(([\d.]+) MiB/s\)", line)
        assert bar and said, r.stderr + line
        assert bar[-1] == said.group(3), (bar, line)
        moved = 8 * MiB + sum(range(2, 6)) if args[0] == "upload" else 12 * MiB + sum(range(6))
        assert said.group(1) == f"{moved / MiB:.1f}"


def test_bad_endpoint_url_and_bucket_name_are_one_line_everywhere(tmp_path, s3_env, bucket):
    src = tmp_path / "src"
    src.mkdir()
    (src / "a.txt").write_text("hello")
    dst = tmp_path / "dst"
    spec = tmp_path / "cluster.yaml"
    spec.write_text(
        json.dumps(
            {
                "name": "c1",
                "instance_type": "p5.48xlarge",
                "nodes": 1,
                "gpus_per_node": 8,
                "aws": {"region": "us-east-1", "subnet_id": "subnet-1", "fsx": {"s3_import_path": "s3://ok-bucket/x"}},
            }
        )
    )
    good = f"s3://{bucket}/p"
    commands = [
        ["data", "upload", str(src), good],
        ["data", "download", good, str(dst)],
        ["data", "sync", good, str(dst)],
        ["data", "verify", good],
        ["storage", "init", str(spec)],
    ]
    for cmd in commands:
        r = cli(s3_env, *cmd, "--endpoint-url", "notaurl")
        _one_clear_line(r, "'notaurl' is not an endpoint URL")
        r = cli({**s3_env, "AWS_ENDPOINT_URL": "notaurl"}, *cmd)
        _one_clear_line(r, "'notaurl' is not an endpoint URL", "AWS_ENDPOINT_URL")

    bad = "s3://Bad_Bucket!/p"
    for cmd in (
        ["data", "upload", str(src), bad],
        ["data", "download", bad, str(dst)],
        ["data", "sync", str(src), bad],
        ["data", "verify", bad],
    ):
        r = cli(s3_env, *cmd)
        _one_clear_line(r, "'Bad_Bucket!' is not a valid bucket name")
        assert "regex" not in r.stderr and len(r.stderr) < 200, r.stderr
    spec.write_text(spec.read_text().replace("s3://ok-bucket/x", bad))
    r = cli(s3_env, "storage", "init", str(spec))
    _one_clear_line(r, "'Bad_Bucket!' is not a valid bucket name")
    assert not dst.exists()
