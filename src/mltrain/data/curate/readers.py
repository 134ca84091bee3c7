"""Sources -> (doc_id, text) rows: the driver lists the files (units), Spark tasks read them.

Each unit (a local file or an S3 object) is read by one task with the same readers `data prepare`
uses (mltrain.data.sources), so a document means the same thing in both commands. S3 objects are
read on the executors with boto3 (no hadoop-aws jars): each executor's own credential chain (instance
role on EMR and ParallelCluster); on local[*] the driver's AWS_* settings are handed to the tasks.
doc_id = unit index << 32 | position in the unit: unique, and ordered like the sources.
"""

from __future__ import annotations

import io
import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from mltrain.data.sources import (
    FILE_SUFFIXES,
    SourceStats,
    _iter_file,
    _jsonl_docs,
    _usable_text,
    _whole_text,
    resolve_source,
)
from mltrain.errors import DataError

UNIT_SHIFT = 32
_AWS_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_MAX_ATTEMPTS",
)


@dataclass(frozen=True)
class Unit:
    """One file or object of the corpus; `index` orders the corpus and makes doc ids."""

    index: int
    url: str
    size: int
    version: str  # mtime (local) or ETag (S3): part of the read step's key, so an edited source is re-read


def list_units(sources: list[str]) -> list[Unit]:
    """Every file the sources name, in config order then path/key order (DataError when one matches none)."""
    units: list[Unit] = []
    for spec in sources:
        if spec.startswith("s3://"):
            units += _s3_units(spec, len(units))
            continue
        if spec.startswith(("builtin:", "hf:")):
            raise DataError(f"curate.sources: {spec!r}: curate reads files and s3:// prefixes only")
        for path in resolve_source(spec):
            try:
                st = path.stat()
            except OSError as e:
                raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
            units.append(Unit(len(units), str(path.resolve()), st.st_size, str(st.st_mtime_ns)))
    return units


def _s3_units(spec: str, start: int) -> list[Unit]:
    from botocore.exceptions import BotoCoreError, ClientError

    from mltrain.storage.client import describe
    from mltrain.storage.source import _client, list_s3_source
    from mltrain.storage.url import parse_s3_url

    out = []
    for url, _suffix in list_s3_source(spec, FILE_SUFFIXES):
        u = parse_s3_url(url)
        try:
            head = _client().head_object(Bucket=u.bucket, Key=u.prefix)
        except (BotoCoreError, ClientError) as e:
            raise DataError(describe(e, url)) from None
        out.append(Unit(start + len(out), url, int(head["ContentLength"]), str(head.get("ETag", ""))))
    return out


def check_units(units: list[Unit], text_field: str) -> None:
    """What the driver can check before any task runs: local files readable; every local parquet file
    has the text column, as a string, in all files alike (mixed schemas are one clear line)."""
    seen: dict[str, str] = {}
    for unit in units:
        if unit.url.startswith("s3://"):
            continue
        if not os.access(unit.url, os.R_OK):
            raise DataError(f"{unit.url}: cannot read: permission denied")
        if not unit.url.lower().endswith(".parquet"):
            continue
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(unit.url)
        except (OSError, ValueError, pa.ArrowException) as e:
            raise DataError(f"{unit.url}: cannot read parquet: {e}") from None
        if text_field not in schema.names:
            raise DataError(
                f"{unit.url}: no column {text_field!r} (columns: {', '.join(schema.names)}); set curate.text_field"
            )
        typ = schema.field(text_field).type
        kind = "string" if (pa.types.is_string(typ) or pa.types.is_large_string(typ)) else str(typ)
        other = next((url for k, url in seen.items() if k != kind), None)
        if other is not None:
            raise DataError(
                f"{unit.url}: mixed schemas: column {text_field!r} is {typ} here but not in {other}; "
                "rewrite the files with one schema or curate them separately"
            )
        if kind != "string":
            raise DataError(f"{unit.url}: column {text_field!r} is {typ}, not a string column")
        seen.setdefault(kind, unit.url)


def driver_aws_env(master: str) -> dict[str, str]:
    """The driver's AWS_* settings, handed to tasks only when they run on this machine (local[*])."""
    if not master.startswith("local"):
        return {}
    return {k: os.environ[k] for k in _AWS_ENV if k in os.environ}


def _use_env(env: dict[str, str]) -> None:
    changed = any(os.environ.get(k) != v for k, v in env.items())
    os.environ.update(env)
    if changed:
        from mltrain.storage import source

        source._local.client = None  # made with other settings


def read_unit(url: str, text_field: str, stats: SourceStats, env: dict[str, str] | None = None) -> Iterator[str]:
    """The documents of one unit, skipping (and counting in `stats`) bad records like `data prepare`."""
    if not url.startswith("s3://"):
        yield from _iter_file(Path(url), text_field, stats)
        return
    if env:
        _use_env(env)
    from mltrain.storage.source import read_object, stream_lines

    stats.files += 1
    lower = url.lower()
    if lower.endswith(".jsonl"):
        yield from _jsonl_docs(stream_lines(url), url, text_field, stats)
    elif lower.endswith(".parquet"):
        yield from _parquet_bytes(read_object(url), url, text_field, stats)
    else:
        yield from _whole_text(read_object(url), url, stats)


def _parquet_bytes(raw: bytes, url: str, text_field: str, stats: SourceStats) -> Iterator[str]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except (OSError, ValueError, pa.ArrowException) as e:
        raise DataError(f"{url}: cannot read parquet: {e}") from None
    if text_field not in table.column_names:
        raise DataError(f"{url}: no column {text_field!r} (columns: {', '.join(table.column_names)})")
    for row, value in enumerate(table.column(text_field).to_pylist(), 1):
        if _usable_text(value, f"{url}:row {row}", stats):
            yield value


def unit_rows(
    units: list[tuple[int, str]], text_field: str, env: dict[str, str]
) -> Iterator[tuple[int, str | None, str | None]]:
    """Task body: (doc_id, text, None) per document; then one (-(unit+1), None, skipped-counts JSON)
    row per unit that skipped records, which the driver adds to the report."""
    for index, url in units:
        stats = SourceStats()
        for i, doc in enumerate(read_unit(url, text_field, stats, env)):
            yield (index << UNIT_SHIFT) | i, doc, None
        if stats.skipped_docs:
            yield -(index + 1), None, json.dumps(dict(Counter(stats.skipped_reasons)))


def doc_location(units: list[Unit], doc_id: int) -> str:
    """'file:N' (1-based document number in its file) for examples in the report."""
    unit = doc_id >> UNIT_SHIFT
    url = units[unit].url if 0 <= unit < len(units) else "?"
    return f"{url}:{(doc_id & ((1 << UNIT_SHIFT) - 1)) + 1}"
