"""`mltrain data validate`: re-check a prepared data dir against its manifest, shard by shard.

Two levels: `validate_data_dir` (full: sha256 of every byte, token-id range; minutes on a large
corpus) for after a copy or upload, and `check_manifest_consistency` (headers and sizes only;
milliseconds) that the trainer runs at every start so a truncated shard fails fast by name.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mltrain.data.manifest import Manifest, ShardInfo, load_manifest
from mltrain.data.shards import HEADER_SIZE, check_shard_file, file_sha256, read_header
from mltrain.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console

_SCAN_TOKENS = 1 << 24  # max-id scan in 16M-token slices: bounded memory on huge shards


@dataclass
class ShardReport:
    shard: ShardInfo
    problems: list[str] = field(default_factory=list)
    max_id: int | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def _max_token_id(path: Path, dtype: np.dtype, tokens: int) -> int:
    if tokens == 0:
        return -1
    mm = np.memmap(path, dtype=dtype, mode="r", offset=HEADER_SIZE, shape=(tokens,))
    return max(int(mm[i : i + _SCAN_TOKENS].max()) for i in range(0, tokens, _SCAN_TOKENS))


def check_shard(data_dir: Path, manifest: Manifest, shard: ShardInfo, model_vocab_size: int | None) -> ShardReport:
    """Every check for one shard; collects all problems instead of stopping at the first."""
    rep = ShardReport(shard)
    path = data_dir / shard.file
    if not path.is_file():
        rep.problems.append("missing")
        return rep
    try:
        header = read_header(path)
    except DataError as e:
        rep.problems.append(str(e).removeprefix(f"{path}: "))
        return rep
    if header.dtype.name != manifest.dtype:
        rep.problems.append(f"dtype {header.dtype.name} in header, manifest says {manifest.dtype}")
    if header.tokens != shard.tokens:
        rep.problems.append(f"header has {header.tokens} tokens, manifest says {shard.tokens}")
    size = path.stat().st_size
    expected = HEADER_SIZE + shard.tokens * np.dtype(manifest.dtype).itemsize
    if size != expected:
        what = "truncated" if size < expected else "too long"
        rep.problems.append(f"{what}: {size} bytes, expected {expected}")
    if file_sha256(path) != shard.sha256:
        rep.problems.append("sha256 mismatch (content changed)")
    if size >= header.file_bytes:  # only scan what the header promises and the file holds
        rep.max_id = _max_token_id(path, header.dtype, header.tokens)
        limit = manifest.vocab_size if model_vocab_size is None else min(manifest.vocab_size, model_vocab_size)
        if rep.max_id >= limit:
            who = "tokenizer vocab" if limit == manifest.vocab_size else "model vocab_size"
            rep.problems.append(f"token id {rep.max_id} >= {who} {limit}")
    return rep


def _check_tokenizer(data_dir: Path, manifest: Manifest) -> list[str]:
    path = data_dir / manifest.tokenizer.file
    if not path.is_file():
        return [f"{path}: tokenizer file missing"]
    if file_sha256(path) != manifest.tokenizer.sha256:
        return [f"{path}: sha256 differs from the manifest (tokenizer replaced after prepare)"]
    return []


def validate_data_dir(
    data_dir: str | Path, model_vocab_size: int | None = None, console: Console | None = None
) -> bool:
    """Full re-check; prints a per-shard table and a summary; True only when nothing is wrong.

    A missing or unreadable manifest raises DataError (there is nothing to check against).
    """
    from rich.table import Table

    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    general = _check_tokenizer(data_dir, manifest)
    if model_vocab_size is not None and manifest.vocab_size > model_vocab_size:
        general.append(f"tokenizer vocab {manifest.vocab_size} is larger than model vocab_size {model_vocab_size}")
    if not manifest.splits["train"]:
        general.append("manifest lists no train shards")
    reports = [check_shard(data_dir, manifest, s, model_vocab_size) for s in manifest.shards]
    listed = {s.file for s in manifest.shards}
    strays = sorted(p.name for p in data_dir.glob("*.bin") if p.name not in listed)

    bad = [r for r in reports if not r.ok]
    ok = not bad and not general
    if console is not None:
        table = Table(title=f"{data_dir} ({manifest.dtype}, vocab {manifest.vocab_size})")
        for col, kw in (
            ("shard", {}),
            ("split", {}),
            ("tokens", {"justify": "right"}),
            ("max id", {"justify": "right"}),
            ("status", {}),
            ("problem", {"overflow": "fold"}),
        ):
            table.add_column(col, **kw)
        for r in reports:
            table.add_row(
                r.shard.file,
                r.shard.split,
                f"{r.shard.tokens:,}",
                "" if r.max_id is None else str(r.max_id),
                "[green]ok[/]" if r.ok else "[red]BAD[/]",
                "; ".join(r.problems),
            )
        console.print(table)
        for msg in general:
            console.print(f"[red]problem:[/] {msg}", highlight=False)
        for name in strays:
            console.print(f"[yellow]note:[/] {name} is not in the manifest (ignored)", highlight=False)
        total = sum(s.tokens for s in manifest.shards)
        if ok:
            console.print(f"[green]OK[/]: {len(reports)} shards, {total:,} tokens, tokenizer hash matches")
        else:
            names = ", ".join(r.shard.file for r in bad)
            console.print(
                f"[red]FAILED[/]: {len(bad)} of {len(reports)} shards bad"
                + (f" ({names})" if names else "")
                + (f", {len(general)} other problems" if general else ""),
                highlight=False,
            )
    return ok


def check_manifest_consistency(data_dir: str | Path) -> Manifest:
    """Fast start-of-training check (headers and sizes, no hashing); DataError names the shard."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    for shard in manifest.shards:
        check_shard_file(data_dir / shard.file, expected_tokens=shard.tokens, expected_dtype=manifest.dtype)
    return manifest
