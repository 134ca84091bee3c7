"""Turn `data.sources` entries into a deterministic stream of text documents.

Accepted entries: a .txt file (one document per file), a .jsonl file (one document per line,
`data.text_field`), a .parquet file (the same column), a directory (searched recursively for
those suffixes), a glob, `s3://bucket/prefix/*.jsonl` (streamed from S3), `builtin:python-stdlib` (this Python's own standard library sources,
so the demo works offline on any machine), and `hf:NAME` (needs `datasets` and the hub).

Bad documents (non-UTF-8 bytes, invalid JSON lines, missing field, empty text) are skipped and
counted instead of crashing a multi-hour prepare; missing paths and unreadable files are errors
that name the path, because silently training on less data than intended is worse.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mltrain.config import DataConfig
from mltrain.errors import DataError

BUILTIN_STDLIB = "builtin:python-stdlib"
BUILTIN_DEFAULT_CAP_BYTES = 4_000_000
FILE_SUFFIXES = (".txt", ".jsonl", ".parquet")
_GLOB_CHARS = set("*?[")
_MAX_EXAMPLES = 5


@dataclass
class SourceStats:
    """What was read and what was skipped (and why), for the summary and the manifest."""

    files: int = 0
    docs: int = 0
    bytes: int = 0
    skipped_docs: int = 0
    skipped_files: int = 0
    skipped_reasons: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)
    capped: bool = False

    def skip(self, where: str, reason: str, whole_file: bool = False) -> None:
        self.skipped_docs += 1
        self.skipped_files += int(whole_file)
        self.skipped_reasons[reason] += 1
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append(f"{where}: {reason}")


class Fingerprint:
    """sha256 over length-prefixed UTF-8 documents: identifies the corpus content and order."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def add(self, doc: str) -> None:
        raw = doc.encode("utf-8")
        self._h.update(len(raw).to_bytes(8, "little"))
        self._h.update(raw)

    def hexdigest(self) -> str:
        return self._h.hexdigest()


@dataclass
class CorpusScan:
    """One pass over the sources without keeping the text: counts, skips, fingerprint, and
    each document's UTF-8 size (8 bytes per document) for a byte-balanced train/val split."""

    docs: int
    doc_bytes: np.ndarray
    stats: SourceStats
    fingerprint: str


@dataclass
class Corpus:
    """All accepted documents in source order, plus a content fingerprint for caching."""

    docs: list[str]
    stats: SourceStats
    fingerprint: str


# --------------------------------------------------------------------------- resolving entries


def builtin_stdlib_files() -> list[Path]:
    """The stdlib's .py files (no site-packages), sorted by relative path: same list on every run."""
    root = Path(sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise DataError(f"{BUILTIN_STDLIB}: standard library dir {root} not found")
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__")]
        for name in filenames:
            p = Path(dirpath) / name
            # empty __init__.py files are not documents, and not worth reporting as skipped
            if name.endswith(".py") and p.is_file() and p.stat().st_size > 0:
                files.append(p)
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def resolve_source(spec: str) -> list[Path]:
    """Expand one local entry (file, dir or glob) into a sorted list of files; DataError if none."""
    if any(c in _GLOB_CHARS for c in spec):
        matches = sorted(Path(m) for m in glob.glob(spec, recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise DataError(f"data.sources: {spec!r}: glob matches no files")
        return files
    path = Path(spec).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in FILE_SUFFIXES and p.is_file())
        if not files:
            raise DataError(f"data.sources: {path}: directory has no {'/'.join(FILE_SUFFIXES)} files")
        return files
    if path.is_file():
        return [path]
    if path.exists():
        raise DataError(f"data.sources: {path}: not a regular file or directory")
    raise DataError(f"data.sources: {path}: no such file or directory")


# --------------------------------------------------------------------------- readers


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _decode(raw: bytes) -> str | None:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text[1:] if text.startswith("\ufeff") else text


def _whole_text(raw: bytes, where: str, stats: SourceStats) -> Iterator[str]:
    """A .txt file or object as one document; a non-UTF-8 or blank one is counted as skipped, not fatal."""
    text = _decode(raw)
    if text is None:
        stats.skip(where, "non-utf8", whole_file=True)
    elif not text.strip():
        stats.skip(where, "empty", whole_file=True)
    else:
        yield text


def _iter_txt(path: Path, stats: SourceStats) -> Iterator[str]:
    yield from _whole_text(_read_bytes(path), str(path), stats)


def _iter_jsonl(path: Path, text_field: str, stats: SourceStats) -> Iterator[str]:
    try:
        f = open(path, "rb")  # noqa: SIM115 (closed by the `with f` below)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    with f:
        try:
            yield from _jsonl_docs(f, str(path), text_field, stats)
        except OSError as e:
            raise DataError(f"{path}: cannot read: {e.strerror or e}") from None


def _jsonl_docs(lines: Iterable[bytes], name: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    """Documents of JSON lines read from a local file or streamed from S3 (`name` is for messages)."""
    good = missing = 0
    for lineno, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        where = f"{name}:{lineno}"
        line = _decode(raw)
        if line is None:
            stats.skip(where, "non-utf8")
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            stats.skip(where, "invalid-json")
            continue
        value = obj.get(text_field) if isinstance(obj, dict) else None
        missing += value is None
        if _usable_text(value, where, stats):
            good += 1
            yield value
    if good == 0 and missing:
        raise DataError(f"{name}: no line has the field {text_field!r} (set data.text_field)")


def _usable_text(value: object, where: str, stats: SourceStats) -> bool:
    """A record's text field is a document only when it is a non-blank string; else skip and count why."""
    if value is None:
        stats.skip(where, "missing-field")
    elif not isinstance(value, str):
        stats.skip(where, "not-text")
    elif not value.strip():
        stats.skip(where, "empty")
    else:
        return True
    return False


def _iter_parquet(path: Path, text_field: str, stats: SourceStats) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading .parquet needs pyarrow (pip install 'mltrain[parquet]')") from None
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read parquet: {e}") from None
    names = pf.schema_arrow.names
    if text_field not in names:
        raise DataError(f"{path}: no column {text_field!r} (columns: {', '.join(names)}); set data.text_field")
    row = 0
    try:
        for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
            for value in batch.column(0).to_pylist():
                row += 1
                where = f"{path}:row {row}"
                if isinstance(value, bytes):
                    value = _decode(value)
                    if value is None:
                        stats.skip(where, "non-utf8")
                        continue
                if _usable_text(value, where, stats):
                    yield value
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read parquet: {e}") from None


def _iter_file(path: Path, text_field: str, stats: SourceStats) -> Iterator[str]:
    stats.files += 1
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        yield from _iter_jsonl(path, text_field, stats)
    elif suffix == ".parquet":
        yield from _iter_parquet(path, text_field, stats)
    else:  # .txt, and any other file the user named explicitly, is plain text
        yield from _iter_txt(path, stats)


def _iter_hf(name: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise DataError(
            f"hf:{name}: Hugging Face datasets need the `datasets` package (pip install datasets)"
        ) from None
    from mltrain.data.tokenizer import hub_unreachable_reason

    reason = hub_unreachable_reason()
    if reason:
        raise DataError(f"hf:{name}: the Hugging Face hub is unreachable: {reason}")
    try:
        ds = datasets.load_dataset(name, split="train", streaming=True)
        for i, rec in enumerate(ds):
            value = rec.get(text_field)
            if isinstance(value, str) and value.strip():
                yield value
            else:
                stats.skip(f"hf:{name}[{i}]", "missing-field" if value is None else "empty")
    except DataError:
        raise
    except Exception as e:  # network, auth, unknown dataset: all are "cannot use this source"
        raise DataError(f"hf:{name}: cannot load from the Hugging Face hub (offline or unknown name?): {e}") from None


def _iter_s3(spec: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    """Objects matching an s3:// entry, streamed line by line (.jsonl) or one object per document (.txt):
    nothing is staged on local disk, so a corpus larger than the disk can still be prepared."""
    from mltrain.storage.source import list_s3_source, read_object, stream_lines

    for url, suffix in list_s3_source(spec, FILE_SUFFIXES):
        stats.files += 1
        if suffix == ".jsonl":
            yield from _jsonl_docs(stream_lines(url), url, text_field, stats)
        elif suffix == ".parquet":
            raise DataError(
                f"{url}: .parquet is not streamed from S3; `mltrain data download` it and name the local copy"
            )
        else:
            yield from _whole_text(read_object(url), url, stats)


def _iter_entry(spec: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    if spec.startswith("builtin:"):
        if spec != BUILTIN_STDLIB:
            raise DataError(f"data.sources: unknown builtin {spec!r}; known: {BUILTIN_STDLIB}")
        for path in builtin_stdlib_files():
            yield from _iter_file(path, text_field, stats)
    elif spec.startswith("hf:"):
        yield from _iter_hf(spec[3:], text_field, stats)
    elif spec.startswith("s3://"):
        yield from _iter_s3(spec, text_field, stats)
    else:
        for path in resolve_source(spec):
            yield from _iter_file(path, text_field, stats)


# --------------------------------------------------------------------------- public API


def iter_documents(data_cfg: DataConfig, stats: SourceStats | None = None) -> Iterator[str]:
    """Yield every accepted document in config order; stop once `max_source_bytes` are read.

    `builtin:python-stdlib` is capped at BUILTIN_DEFAULT_CAP_BYTES unless max_source_bytes is
    set, so the demo corpus stays a few MB whatever the Python install.
    """
    stats = stats if stats is not None else SourceStats()
    if not data_cfg.sources:
        raise DataError("data.sources: empty list; name at least one file, dir, glob or builtin:python-stdlib")
    for spec in data_cfg.sources:
        cap = data_cfg.max_source_bytes
        if cap is None and spec == BUILTIN_STDLIB:
            cap = stats.bytes + BUILTIN_DEFAULT_CAP_BYTES
        for doc in _iter_entry(spec, data_cfg.text_field, stats):
            stats.docs += 1
            stats.bytes += len(doc.encode("utf-8"))
            yield doc
            if cap is not None and stats.bytes >= cap:
                stats.capped = True
                break
        if data_cfg.max_source_bytes is not None and stats.capped:
            return


def _empty_corpus_error(data_cfg: DataConfig, stats: SourceStats) -> DataError:
    why = ", ".join(f"{n} {r}" for r, n in sorted(stats.skipped_reasons.items()))
    detail = f" ({stats.files} files read, skipped: {why})" if why else f" ({stats.files} files read)"
    return DataError(f"data.sources {data_cfg.sources}: corpus is empty, no usable documents{detail}")


def scan_corpus(data_cfg: DataConfig, on_doc: Callable[[SourceStats], None] | None = None) -> CorpusScan:
    """Count and fingerprint the corpus in constant memory (prepare streams it again later).

    `on_doc(stats)` is called after each accepted document (progress display).
    """
    stats = SourceStats()
    fp = Fingerprint()
    sizes = array("q")
    seen = 0
    for doc in iter_documents(data_cfg, stats):  # stats.bytes already counts `doc` here
        fp.add(doc)
        sizes.append(stats.bytes - seen)
        seen = stats.bytes
        if on_doc is not None:
            on_doc(stats)
    if stats.docs == 0:
        raise _empty_corpus_error(data_cfg, stats)
    return CorpusScan(
        docs=stats.docs, doc_bytes=np.frombuffer(sizes, dtype=np.int64), stats=stats, fingerprint=fp.hexdigest()
    )


def read_corpus(data_cfg: DataConfig) -> Corpus:
    """All documents in memory plus the same fingerprint as scan_corpus (small corpora, tests)."""
    stats = SourceStats()
    fp = Fingerprint()
    docs: list[str] = []
    for doc in iter_documents(data_cfg, stats):
        fp.add(doc)
        docs.append(doc)
    if not docs:
        raise _empty_corpus_error(data_cfg, stats)
    return Corpus(docs=docs, stats=stats, fingerprint=fp.hexdigest())
