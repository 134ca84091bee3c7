"""`verify_prefix` on moto's real S3 server, called in this process: exactly which objects are missing,
extra or mismatched, with which reason, and what was counted."""

from __future__ import annotations

import base64
import hashlib

import pytest

from mltrain.storage.client import S3Options, make_client
from mltrain.storage.manifest import MANIFEST_NAME
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


def test_an_object_without_a_stored_checksum_says_none(client, uploaded, s3_env, bucket):
    """Rewritten by a client that sends no additional checksum (same bytes): S3 stores none to compare."""
    import boto3
    from botocore.config import Config

    plain = boto3.client(
        "s3", endpoint_url=s3_env["AWS_ENDPOINT_URL"], config=Config(request_checksum_calculation="when_required")
    )
    plain.put_object(Bucket=bucket, Key="v/a.bin", Body=b"a" * 1000)
    rep = verify_prefix(client, uploaded, progress=False)
    assert rep.mismatched == [f"a.bin: S3 checksum none, manifest expects SHA256:{b64sha(b'a' * 1000)}"]


def test_deep_reads_an_object_1_mib_at_a_time(client, s3, bucket, tmp_path):
    """The deep check never holds more than 1 MiB of an object, whatever its size."""
    from mltrain.storage.verify import _deep_sha256

    data = bytes(range(256)) * (10 * 1024)  # 2.5 MiB
    s3.put_object(Bucket=bucket, Key="big/x.bin", Body=data)
    sizes: list[int] = []
    sha = _deep_sha256(client, parse_s3_url(f"s3://{bucket}/big"), "x.bin", sizes.append)
    assert sizes == [1 << 20, 1 << 20, 512 << 10] and sha == hashlib.sha256(data).hexdigest()


class _Recording:
    """The real moto client, with its HeadObject calls counted while in flight (each held 0.1 s) and
    GetObject of the data optionally refused: how many objects verify checks at once, and what it does with a refusal."""

    def __init__(self, client, refuse_get: bool = False) -> None:
        import threading

        self._client, self._refuse_get, self._lock = client, refuse_get, threading.Lock()
        self.active = self.most = 0

    def __getattr__(self, name):
        return getattr(self._client, name)

    def head_object(self, **kw):
        import time

        with self._lock:
            self.active += 1
            self.most = max(self.most, self.active)
        try:
            time.sleep(0.1)
            return self._client.head_object(**kw)
        finally:
            with self._lock:
                self.active -= 1

    def get_object(self, **kw):
        from botocore.exceptions import ClientError

        if self._refuse_get and not kw["Key"].endswith(MANIFEST_NAME):
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "GetObject")
        return self._client.get_object(**kw)


def test_objects_are_checked_16_at_a_time_by_default_or_as_many_as_asked(client, s3, bucket, tmp_path):
    src = tmp_path / "many"
    src.mkdir()
    for i in range(20):
        (src / f"{i:02d}.bin").write_bytes(bytes([i]) * 10)
    url = parse_s3_url(f"s3://{bucket}/many")
    upload(src, url, client, SHA, progress=False)
    rec = _Recording(client)
    assert verify_prefix(rec, url, progress=False).checked == 20 and rec.most == 16
    rec = _Recording(client)
    assert verify_prefix(rec, url, workers=2, progress=False).ok and rec.most == 2


def test_a_refused_read_is_one_line_naming_the_prefix(client, uploaded):
    with pytest.raises(StorageError) as e:
        verify_prefix(_Recording(client, refuse_get=True), uploaded, deep=True, progress=False)
    assert str(e.value) == f"{uploaded}: access denied (check the credentials' IAM permissions and the bucket policy)"


@pytest.mark.parametrize("deep", [False, True])
def test_the_bar_names_the_prefix_and_the_mode(client, uploaded, deep):
    """A progress bar by default when given a console: `verify <url>`, with ` --deep` for a deep check."""
    import io
    import re

    from rich.console import Console

    out = io.StringIO()
    verify_prefix(client, uploaded, deep=deep, console=Console(file=out, force_terminal=True, width=160))
    shown = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert re.search(rf"verify {re.escape(str(uploaded))}{' --deep' if deep else ''} ", shown), shown
    assert "5.9/5.9 KiB" in shown or "6.0/6.0 kB" in shown, shown
