"""Local hashes of a file and the checksum S3 will store for it, computed in one read.

S3 stores an additional checksum per object. With SHA256 a single-PUT object stores
base64(sha256(file)); a multipart object stores the composite base64(sha256(d1 || d2 || ...))-N
over its parts' raw sha256 digests, so the expected value depends on the part size, which the
manifest records. With CRC64NVME (when `awscrt` is installed) S3 stores a full-object CRC
whatever the part size. Either way we compute the value ourselves from the local bytes, so
verification never trusts the server to have rejected anything.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SHA256 = "SHA256"
CRC64NVME = "CRC64NVME"
_READ_BYTES = 8 << 20


def crt_available() -> bool:
    try:
        import awscrt.checksums  # noqa: F401
    except ImportError:
        return False
    return True


def choose_algorithm(name: str = "auto") -> str:
    """'auto' -> CRC64NVME when awscrt is importable (faster, part-size independent), else SHA256."""
    name = name.upper()
    if name == "AUTO":
        return CRC64NVME if crt_available() else SHA256
    if name not in (SHA256, CRC64NVME):
        from mltrain.storage.url import StorageError

        raise StorageError(f"--checksum {name.lower()}: expected sha256, crc64nvme or auto")
    if name == CRC64NVME and not crt_available():
        from mltrain.storage.url import StorageError

        raise StorageError("--checksum crc64nvme needs awscrt (pip install 'botocore[crt]')")
    return name


def part_size_for(size: int, threshold: int, chunk: int) -> int:
    """The part size s3transfer will really use for a `size`-byte file (0 = single PUT)."""
    if size < threshold:
        return 0
    from s3transfer.utils import ChunksizeAdjuster

    return ChunksizeAdjuster().adjust_chunksize(chunk, size)


@dataclass(frozen=True)
class FileDigest:
    """What the manifest records for one file."""

    size: int
    sha256: str
    part_size: int  # 0: uploaded with one PUT
    s3_checksum: str  # "<ALGO>:<value as S3 returns it>"


def s3_checksum_value(algorithm: str, whole: bytes, parts: list[bytes], multipart: bool) -> str:
    if algorithm == CRC64NVME:
        return f"{CRC64NVME}:{base64.b64encode(whole).decode()}"
    if not multipart:
        return f"{SHA256}:{base64.b64encode(whole).decode()}"
    composite = hashlib.sha256(b"".join(parts)).digest()
    return f"{SHA256}:{base64.b64encode(composite).decode()}-{len(parts)}"


def digest_file(path: Path, part_size: int, algorithm: str = SHA256) -> FileDigest:
    """sha256 of the file, plus the S3 checksum for `part_size` (0 = one PUT), in a single read."""
    sha = hashlib.sha256()
    part_digests: list[bytes] = []
    part = hashlib.sha256()
    in_part = 0
    crc = 0
    crc_fn = None
    if algorithm == CRC64NVME:
        from awscrt.checksums import crc64nvme as crc_fn
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(_READ_BYTES):
            size += len(chunk)
            sha.update(chunk)
            if crc_fn is not None:
                crc = crc_fn(chunk, crc)
            if algorithm == SHA256 and part_size:
                view = memoryview(chunk)
                while view:
                    take = min(len(view), part_size - in_part)
                    part.update(view[:take])
                    in_part += take
                    view = view[take:]
                    if in_part == part_size:
                        part_digests.append(part.digest())
                        part, in_part = hashlib.sha256(), 0
    if in_part or (part_size and not part_digests):
        part_digests.append(part.digest())
    whole = crc.to_bytes(8, "big") if algorithm == CRC64NVME else sha.digest()
    return FileDigest(
        size, sha.hexdigest(), part_size, s3_checksum_value(algorithm, whole, part_digests, part_size > 0)
    )


def same_checksum(a: str | None, b: str | None) -> bool:
    """Equal checksums, ignoring the "-<parts>" suffix that S3 appends to composite values and some
    S3-compatible stores (moto) leave out."""
    if not a or not b:
        return False
    return re.sub(r"-\d+$", "", a) == re.sub(r"-\d+$", "", b)


def stored_checksum(head: dict) -> str | None:
    """The additional checksum a HeadObject(ChecksumMode=ENABLED) response carries, as "<ALGO>:<value>"."""
    for algo in (CRC64NVME, SHA256, "CRC32", "CRC32C", "SHA1"):
        value = head.get(f"Checksum{algo}")
        if value:
            return f"{algo}:{value}"
    return None


def local_checksum(path: Path, algorithm: str) -> str | None:
    """The whole-object checksum S3 stores under `algorithm` for the bytes of `path`, as "<ALGO>:<value>";
    None for an algorithm computed here without a dependency we lack (CRC32C, SHA1, CRC64NVME without awscrt).
    Used to check an object no manifest lists against the checksum S3 stores for it."""
    if algorithm == SHA256:
        return digest_file(path, 0).s3_checksum
    if algorithm == CRC64NVME:
        return digest_file(path, 0, CRC64NVME).s3_checksum if crt_available() else None
    if algorithm == "CRC32":
        import zlib

        crc = 0
        with open(path, "rb") as f:
            while chunk := f.read(_READ_BYTES):
                crc = zlib.crc32(chunk, crc)
        return f"CRC32:{base64.b64encode(crc.to_bytes(4, 'big')).decode()}"
    return None


class StreamDigest:
    """A write-only file that hashes the bytes written to it, in order: a download checked while it
    streams in, with no second read. It reports itself unseekable, so both transfer engines hand it
    the body in order (s3transfer buffers out-of-order ranged parts; the CRT delivers in order).

    Keeps the sha256 (the manifest's hash) and, with awscrt, the CRC64NVME S3 stores for an object."""

    def __init__(self, path: Path) -> None:
        import secrets

        self.path = Path(path)  # where the bytes are once all are in (close)
        # where they are until then: a name that says "incomplete" (the suffix s3transfer gives its temps)
        self.partial = self.path.with_name(f"{self.path.name}.{secrets.token_hex(4)}")
        self._f: Any = None  # opened at the first byte: thousands of queued downloads hold no descriptors
        self._closed = False
        self._sha = hashlib.sha256()
        self._crc_fn = None
        if crt_available():
            from awscrt.checksums import crc64nvme

            self._crc_fn = crc64nvme
        self._crc = 0
        self.size = 0

    def write(self, data: bytes) -> int:
        if self._f is None:
            self._f = open(self.partial, "wb", buffering=0)  # noqa: SIM115 - closed by close()
        view = memoryview(data)
        while view:
            n = self._f.write(view)
            view = view[n:]
        self._sha.update(data)
        if self._crc_fn is not None:
            self._crc = self._crc_fn(data, self._crc)
        self.size += len(data)
        return len(data)

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def flush(self) -> None:
        pass

    def close(self, complete: bool = True) -> None:
        """Close the file; `complete`: move it to `path` (an empty object, which gets no write, is created
        there), else remove it."""
        if self._closed:
            return
        self._closed = True
        if self._f is not None:
            self._f.close()
        if not complete:
            self.partial.unlink(missing_ok=True)
        elif self._f is None:
            self.path.touch()
        else:
            os.replace(self.partial, self.path)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def sha256(self) -> str:
        return self._sha.hexdigest()

    def s3_checksum(self, algorithm: str) -> str | None:
        """The whole-object checksum of what was written, as S3 states it ("<ALGO>:<value>"); None for an
        algorithm not computed while streaming."""
        if algorithm == SHA256:
            return f"{SHA256}:{base64.b64encode(self._sha.digest()).decode()}"
        if algorithm == CRC64NVME and self._crc_fn is not None:
            return f"{CRC64NVME}:{base64.b64encode(self._crc.to_bytes(8, 'big')).decode()}"
        return None
