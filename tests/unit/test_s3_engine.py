"""The transfer engine choice (the CRT where it does what we need, else classic, saying why) and the
one-pass hashing both directions rely on: no network."""

from __future__ import annotations

import base64
import hashlib
import types

import pytest

from mltrain.storage import engine
from mltrain.storage.digest import CRC64NVME, SHA256, StreamDigest, digest_file
from mltrain.storage.engine import CLASSIC, CRT, Engine, choose_engine, open_manager, requested_engine
from mltrain.storage.transfer import TransferSettings
from mltrain.storage.url import StorageError

crt = pytest.importorskip("awscrt.checksums")


def fake_client(validation: str = "when_required") -> object:
    return types.SimpleNamespace(
        meta=types.SimpleNamespace(config=types.SimpleNamespace(response_checksum_validation=validation))
    )


def test_requested_engine_reads_the_argument_then_the_environment(monkeypatch):
    monkeypatch.delenv(engine.ENGINE_ENV, raising=False)
    assert requested_engine() == "auto" and requested_engine("CRT") == CRT
    monkeypatch.setenv(engine.ENGINE_ENV, "classic")
    assert requested_engine() == CLASSIC and requested_engine("crt") == CRT
    monkeypatch.setenv(engine.ENGINE_ENV, "fast")
    with pytest.raises(StorageError, match="^MLTRAIN_S3_ENGINE=fast: expected auto, crt or classic$"):
        requested_engine()


def test_the_crt_runs_where_it_does_what_we_need_and_classic_says_why_not(monkeypatch):
    assert choose_engine("auto", CRC64NVME, "upload") == Engine(CRT, "")
    assert choose_engine("auto", "", "download", fake_client()) == Engine(CRT, "")
    assert choose_engine("classic", CRC64NVME, "upload") == Engine(CLASSIC, "MLTRAIN_S3_ENGINE=classic")
    sha = choose_engine("auto", SHA256, "upload")
    assert sha.name == CLASSIC and sha.reason.startswith("auto: SHA256 multipart checksums depend on the part size")
    validating = choose_engine("crt", "", "download", fake_client("when_supported"))
    assert validating.name == CLASSIC and "validates each body" in validating.reason
    monkeypatch.setattr(engine, "crt_importable", lambda: "awscrt not installed (awscrt)")
    assert choose_engine("crt", CRC64NVME, "upload") == Engine(CLASSIC, "awscrt not installed (awscrt)")
    assert choose_engine("auto", CRC64NVME, "upload") == Engine(CLASSIC, "auto: awscrt not installed (awscrt)")


def test_a_crt_client_that_cannot_be_built_falls_back_to_classic(monkeypatch):
    from s3transfer.manager import TransferManager

    def broken(*a, **k):
        raise RuntimeError("no event loop")

    monkeypatch.setattr(engine, "crt_manager", broken)
    client = __import__("boto3").client("s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b")
    tm, used = open_manager(Engine(CRT, ""), client, TransferSettings())
    with tm:
        assert isinstance(tm, TransferManager)
    assert used == Engine(CLASSIC, "CRT client unavailable (RuntimeError: no event loop)")


def test_one_read_gives_the_manifest_sha256_and_the_s3_crc64nvme(tmp_path):
    data = bytes(range(256)) * 40_000
    p = tmp_path / "f"
    p.write_bytes(data)
    d = digest_file(p, 0, CRC64NVME)
    crc = crt.crc64nvme(data).to_bytes(8, "big")
    assert (d.size, d.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert d.s3_checksum == f"{CRC64NVME}:{base64.b64encode(crc).decode()}"


def test_a_streamed_download_is_hashed_as_written_and_lands_only_when_complete(tmp_path):
    data = bytes(range(251)) * 9_000
    sink = StreamDigest(tmp_path / "t")
    for i in range(0, len(data), 65_536):
        sink.write(data[i : i + 65_536])
    assert not sink.path.exists() and sink.partial.read_bytes() == data  # incomplete: under the partial name
    sink.close()
    assert sink.path.read_bytes() == data and not sink.partial.exists()
    assert (sink.size, sink.sha256) == (len(data), hashlib.sha256(data).hexdigest())
    assert sink.s3_checksum(SHA256) == f"SHA256:{base64.b64encode(hashlib.sha256(data).digest()).decode()}"
    assert sink.s3_checksum(CRC64NVME) == digest_file(sink.path, 0, CRC64NVME).s3_checksum
    assert sink.s3_checksum("CRC32") is None  # not computed while streaming: the caller reads the file

    bad = StreamDigest(tmp_path / "u")
    bad.write(data[:1000])
    bad.close(complete=False)
    assert not bad.path.exists() and not bad.partial.exists()
    empty = StreamDigest(tmp_path / "e")
    empty.close()
    assert empty.path.read_bytes() == b"" and empty.sha256 == hashlib.sha256(b"").hexdigest()


def test_auto_leaves_a_loopback_endpoint_to_the_classic_engine():
    def client(url: str) -> object:
        return types.SimpleNamespace(
            meta=types.SimpleNamespace(
                endpoint_url=url, config=types.SimpleNamespace(response_checksum_validation="when_required")
            )
        )

    local = choose_engine("auto", CRC64NVME, "upload", client("http://127.0.0.1:5000"))
    assert local.name == CLASSIC and local.reason.startswith("auto: loopback endpoint")
    assert choose_engine("crt", CRC64NVME, "upload", client("http://localhost:9000")) == Engine(CRT, "")
    assert choose_engine("auto", "", "download", client("https://s3.us-east-1.amazonaws.com")) == Engine(CRT, "")
    assert choose_engine("auto", "", "download", client("http://minio.internal:9000")) == Engine(CRT, "")


@pytest.mark.parametrize("buffer_bytes", [1 << 20, 10_000])  # parts kept in memory / read back from the file
def test_parts_written_at_their_offsets_out_of_order_are_hashed_in_file_order(tmp_path, buffer_bytes):
    import random

    data = random.Random(3).randbytes(300_001)
    parts = [(o, data[o : o + 7_000]) for o in range(0, len(data), 7_000)]
    random.Random(4).shuffle(parts)
    sink = StreamDigest(tmp_path / "t", buffer_bytes=buffer_bytes)
    for offset, chunk in parts:
        sink.seek(offset)
        sink.write(chunk)
    assert sink.complete and sink.size == len(data) and sink.sha256 == hashlib.sha256(data).hexdigest()
    sink.close()
    assert sink.path.read_bytes() == data

    gap = StreamDigest(tmp_path / "g")
    gap.seek(10)
    gap.write(b"x" * 10)  # bytes 0-9 never arrive
    assert not gap.complete and gap.size == 0
    gap.close(complete=False)


def test_checkpoint_storage_takes_an_s3_url_and_not_together_with_a_mirror():
    from pydantic import ValidationError

    from mltrain.config import CheckpointConfig

    assert CheckpointConfig(storage="s3://b/runs/a").storage == "s3://b/runs/a"
    with pytest.raises(ValidationError, match="String should match pattern"):
        CheckpointConfig(storage="/local/dir")
    with pytest.raises(ValidationError, match="checkpoint.storage and checkpoint.mirror both set"):
        CheckpointConfig(storage="s3://b/a", mirror="s3://b/m")
