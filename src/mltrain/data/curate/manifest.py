"""curate_manifest.json: the parquet files of a curated output with their checksums, written last
(its presence means the output is complete), and the report beside it."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mltrain.errors import DataError
from mltrain.fsutil import atomic_write, file_sha256

MANIFEST_FILE = "curate_manifest.json"
REPORT_FILE = "curate_report.json"
FORMAT_VERSION = 1


def build_manifest(staged: Path, files: list[str], docs: int, text_bytes: int, key: str) -> dict[str, Any]:
    """sha256 and size of every staged file; `key` identifies the config and sources that made them."""
    entries = [{"file": f, "bytes": (staged / f).stat().st_size, "sha256": file_sha256(staged / f)} for f in files]
    return {
        "format_version": FORMAT_VERSION,
        "kind": "curated-text",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "text_field": "text",
        "docs": docs,
        "text_bytes": text_bytes,
        "config_key": key,
        "files": entries,
    }


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False) + "\n"


def write_local(out_dir: Path, name: str, obj: Any) -> None:
    try:
        atomic_write(out_dir / name, dumps(obj))
    except OSError as e:
        raise DataError(f"{out_dir / name}: cannot write: {e.strerror or e}") from None
