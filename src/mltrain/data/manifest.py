"""manifest.json: the single record of what a prepared data dir contains.

Written last (atomically) by prepare, so a data dir with a manifest is complete; validate and
the loader trust nothing that the manifest does not list.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mltrain.errors import DataError
from mltrain.fsutil import atomic_write

MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "val")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ShardInfo(_Model):
    file: str = Field(description="file name relative to the data dir")
    split: Literal["train", "val"]
    tokens: int = Field(ge=0)
    docs: int = Field(ge=0, description="documents that start in this shard")
    sha256: str


class TokenizerInfo(_Model):
    file: str = "tokenizer.json"
    sha256: str
    vocab_size: int = Field(gt=0)
    eos_id: int = Field(ge=0)
    eos_token: str
    source: str = Field(description="'trained:bytelevel-bpe', a path, or a hub name")


class Counts(_Model):
    files: int = 0
    docs: int = 0
    train_docs: int = 0
    val_docs: int = 0
    skipped_docs: int = 0
    skipped_files: int = 0
    skipped_reasons: dict[str, int] = Field(default_factory=dict)
    bytes: int = 0
    train_tokens: int = 0
    val_tokens: int = 0


class Manifest(_Model):
    format_version: int = MANIFEST_VERSION
    created: str = Field(description="UTC ISO-8601 time the manifest was written")
    dtype: Literal["uint16", "uint32"]
    vocab_size: int = Field(gt=0)
    eos_id: int = Field(ge=0)
    tokenizer: TokenizerInfo
    sources: list[str]
    corpus_fingerprint: str
    shard_tokens: int = Field(gt=0)
    val_fraction: float
    val_sources: list[str] | None = Field(default=None, description="validation files, when named explicitly")
    counts: Counts
    shards: list[ShardInfo]

    @property
    def splits(self) -> dict[str, list[ShardInfo]]:
        """Shards per split, in manifest order (which is the packing order)."""
        out: dict[str, list[ShardInfo]] = {s: [] for s in SPLITS}
        for shard in self.shards:
            out[shard.split].append(shard)
        return out

    @property
    def tokenizer_sha256(self) -> str:
        return self.tokenizer.sha256

    def split_tokens(self, split: str) -> int:
        return sum(s.tokens for s in self.shards if s.split == split)


def load_manifest(data_dir: str | Path) -> Manifest:
    """Read and check manifest.json; DataError names the file and why it cannot be used."""
    path = Path(data_dir) / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if not Path(data_dir).is_dir():
            raise DataError(f"{data_dir}: data dir does not exist (run `mltrain data prepare RUN.yaml`)") from None
        raise DataError(f"{path}: no manifest; the data dir was never prepared or prepare did not finish") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read manifest: {e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: corrupt manifest (invalid JSON at line {e.lineno}: {e.msg})") from None
    if isinstance(data, dict) and data.get("format_version") not in (None, MANIFEST_VERSION):
        raise DataError(
            f"{path}: manifest format_version {data.get('format_version')}, this mltrain reads {MANIFEST_VERSION}"
        )
    try:
        return Manifest.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise DataError(f"{path}: corrupt manifest: {loc}: {first['msg']}") from None


def save_manifest(data_dir: str | Path, manifest: Manifest) -> Path:
    """Temp file + fsync + os.replace: readers see the old manifest or the new one, never half."""
    path = Path(data_dir) / MANIFEST_FILE
    try:
        atomic_write(path, manifest.model_dump_json(indent=2) + "\n")
    except OSError as e:
        raise DataError(f"{path}: cannot write manifest: {e.strerror or e}") from None
    return path
