"""Atomic file writes: readers (and a crash) see the old file or the new one, never half of one.

Every config, manifest, shard, script and marker mltrain writes goes through here, so "a failed write
leaves the previous good state intact" is one mechanism, not eight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def atomic_write(
    path: str | os.PathLike[str], data: str | bytes | Iterable[bytes], *, mode: int | None = None, fsync: bool = True
) -> Path:
    """Write `data` to a temp file beside `path`, fsync it, then rename over `path`.

    Raises OSError (callers turn it into their typed error); the temp file never outlives a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            chunks = [data.encode("utf-8")] if isinstance(data, str) else [data] if isinstance(data, bytes) else data
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def default_file_mode() -> int:
    """The mode open() gives a new file (0o666 less the umask), for files written through a private temp."""
    current = os.umask(0)
    os.umask(current)
    return 0o666 & ~current


def file_sha256(path: str | os.PathLike[str], chunk_bytes: int = 1 << 22) -> str:
    """Streaming sha256 so multi-GB shards and checkpoint files never sit in memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The JSON objects of a .jsonl file, oldest first; [] when it does not exist. A torn line (a writer
    killed mid-line, as happens to a preempted rank) is skipped, never an error."""
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


class JsonlTail:
    """The records of a growing .jsonl file, read incrementally: each `new()` parses only what was appended
    since the last call (whole lines only; a torn last line waits for its newline). A file that shrank or
    was replaced is read again from the start (`reset` tells the caller to drop what it counted)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.offset = 0
        self.ident: tuple[int, int] | None = None
        self.reset = False

    def new(self) -> list[dict[str, Any]]:
        self.reset = False
        try:
            with open(self.path, "rb") as f:
                st = os.fstat(f.fileno())
                ident = (st.st_dev, st.st_ino)
                if ident != self.ident or st.st_size < self.offset:
                    self.reset = self.ident is not None
                    self.ident, self.offset = ident, 0
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            self.reset = self.ident is not None
            self.ident, self.offset = None, 0
            return []
        cut = data.rfind(b"\n") + 1
        self.offset += cut
        out = []
        for line in data[:cut].splitlines():
            try:
                rec = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError):
                continue
            if isinstance(rec, dict):
                out.append(rec)
        return out


def append_jsonl(path: str | os.PathLike[str], record: dict[str, Any]) -> None:
    """Append one record and fsync: event logs (jobs, restarts) must survive the node that wrote them."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())
