"""Binary token shard format: a 32-byte header, then the tokens as little-endian uint16/uint32.

Header (little-endian): magic b"MLTSHRD\\0" (8 bytes), format version u32, dtype code u32
(1 = uint16, 2 = uint32), token count u64, 8 reserved zero bytes. The header lets a reader
reject a file that is not a shard, was written by a newer format, or was truncated, before
a single token reaches the model; the token count makes truncation detectable without the
manifest.
"""

from __future__ import annotations

import hashlib
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mltrain.errors import DataError
from mltrain.fsutil import atomic_write, file_sha256  # noqa: F401  (file_sha256 re-exported)

MAGIC = b"MLTSHRD\0"
FORMAT_VERSION = 1
_HEADER = struct.Struct("<8sIIQ8x")
HEADER_SIZE = _HEADER.size  # 32
DTYPE_CODES: dict[str, int] = {"uint16": 1, "uint32": 2}
_CODE_TO_DTYPE = {v: k for k, v in DTYPE_CODES.items()}


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 halves the disk and page-cache footprint whenever every id fits in it."""
    return np.dtype(np.uint16) if vocab_size < 65536 else np.dtype(np.uint32)


@dataclass(frozen=True)
class ShardHeader:
    version: int
    dtype: np.dtype
    tokens: int

    @property
    def data_bytes(self) -> int:
        return self.tokens * self.dtype.itemsize

    @property
    def file_bytes(self) -> int:
        return HEADER_SIZE + self.data_bytes


def encode_header(dtype: np.dtype, tokens: int) -> bytes:
    name = np.dtype(dtype).name
    if name not in DTYPE_CODES:
        raise DataError(f"unsupported shard dtype {name}; use uint16 or uint32")
    return _HEADER.pack(MAGIC, FORMAT_VERSION, DTYPE_CODES[name], tokens)


def read_header(path: Path) -> ShardHeader:
    """Parse and check a shard header; DataError names the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_SIZE)
    except FileNotFoundError:
        raise DataError(f"{path}: shard file is missing") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read shard: {e.strerror or e}") from None
    if len(raw) < HEADER_SIZE:
        raise DataError(f"{path}: truncated shard header ({len(raw)} of {HEADER_SIZE} bytes)")
    magic, version, code, tokens = _HEADER.unpack(raw)
    if magic != MAGIC:
        raise DataError(f"{path}: not an mltrain token shard (bad magic {magic!r})")
    if version != FORMAT_VERSION:
        raise DataError(f"{path}: shard format version {version}, this mltrain reads version {FORMAT_VERSION}")
    if code not in _CODE_TO_DTYPE:
        raise DataError(f"{path}: unknown dtype code {code} in shard header")
    return ShardHeader(version=version, dtype=np.dtype(_CODE_TO_DTYPE[code]), tokens=tokens)


def check_shard_file(path: Path, expected_tokens: int | None = None, expected_dtype: str | None = None) -> ShardHeader:
    """Header plus size checks (no hashing): cheap enough to run at every trainer start."""
    header = read_header(path)
    if expected_dtype is not None and header.dtype.name != expected_dtype:
        raise DataError(f"{path}: shard dtype {header.dtype.name}, manifest says {expected_dtype}")
    if expected_tokens is not None and header.tokens != expected_tokens:
        raise DataError(f"{path}: header has {header.tokens} tokens, manifest says {expected_tokens}")
    size = path.stat().st_size
    if size != header.file_bytes:
        what = "truncated" if size < header.file_bytes else "has trailing bytes"
        raise DataError(f"{path}: {what}: {size} bytes on disk, header implies {header.file_bytes}")
    return header


def open_shard(path: Path, expected_tokens: int | None = None, expected_dtype: str | None = None) -> np.memmap:
    """Read-only memmap of the tokens: the OS page cache is shared by all ranks, nothing is copied."""
    header = check_shard_file(path, expected_tokens, expected_dtype)
    if header.tokens == 0:
        return np.zeros(0, dtype=header.dtype)  # np.memmap refuses empty maps
    return np.memmap(path, dtype=header.dtype, mode="r", offset=HEADER_SIZE, shape=(header.tokens,))


def write_shard(path: Path, tokens: np.ndarray, dtype: np.dtype) -> str:
    """Write header + tokens to a temp file, fsync, rename into place; return the file's sha256."""
    dtype = np.dtype(dtype)
    arr = np.ascontiguousarray(tokens, dtype=dtype.newbyteorder("<"))
    header = encode_header(dtype, int(arr.size))
    payload = arr.tobytes()
    digest = hashlib.sha256(header)
    digest.update(payload)
    try:
        atomic_write(path, [header, payload])
    except OSError as e:
        raise DataError(f"{path}: cannot write shard: {e.strerror or e}") from None
    return digest.hexdigest()
