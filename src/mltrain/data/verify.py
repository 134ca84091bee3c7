"""Every shard a run trains on is checked in full once: sha256 against the manifest and the id range.

The trainer's every-start check (`check_manifest_consistency`) reads headers and sizes only, so a
bit flip inside a shard would train silently. The first start of a run therefore hashes each shard
(`validate.check_shard`: sha256 + largest token id) and records what it verified in
`<run>/data_verified.json`; later starts compare each shard's size, mtime and inode with the record and
re-hash only shards that changed, so they pay nothing. A bad shard is one line naming the file (and,
for an out-of-vocabulary id, the token offset of the first one).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from mltrain.data.manifest import Manifest, ShardInfo
from mltrain.data.shards import HEADER_SIZE
from mltrain.errors import DataError
from mltrain.fsutil import atomic_write

RECORD_FILE = "data_verified.json"
_SCAN = 1 << 24  # tokens per slice when looking for the first out-of-range id
_PROGRESS_BYTES = 256 * 2**20  # show a progress bar when at least this much is to be hashed


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "inode": st.st_ino}


def load_record(run_dir: Path) -> dict[str, Any]:
    """{shard file: {sha256, size, mtime_ns, inode, verified_at}} of what this run has verified."""
    try:
        data = json.loads((Path(run_dir) / RECORD_FILE).read_text())
        return data if isinstance(data, dict) and isinstance(data.get("shards"), dict) else {"shards": {}}
    except (OSError, ValueError):
        return {"shards": {}}


def first_id_at_or_above(path: Path, dtype: str, tokens: int, limit: int) -> tuple[int, int] | None:
    """(token offset, id) of the first id >= limit in a shard, or None."""
    if tokens == 0:
        return None
    mm = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=HEADER_SIZE, shape=(tokens,))
    for start in range(0, tokens, _SCAN):
        bad = np.flatnonzero(mm[start : start + _SCAN] >= limit)
        if bad.size:
            return start + int(bad[0]), int(mm[start + int(bad[0])])
    return None


def _check(data_dir: Path, manifest: Manifest, shard: ShardInfo, vocab_limit: int) -> None:
    from mltrain.data.validate import check_shard

    path = data_dir / shard.file
    rep = check_shard(data_dir, manifest, shard, vocab_limit)
    if rep.ok:
        return
    problems = [p for p in rep.problems if not p.startswith("token id ")]
    if len(problems) < len(rep.problems):  # out-of-vocabulary: say where
        hit = first_id_at_or_above(path, manifest.dtype, shard.tokens, min(manifest.vocab_size, vocab_limit))
        if hit:
            problems.append(
                f"token id {hit[1]} at token offset {hit[0]} is >= vocab_size {min(manifest.vocab_size, vocab_limit)}"
            )
    raise DataError(
        f"{path}: {'; '.join(problems)}; the shard changed or is corrupt since `mltrain data prepare` "
        "(re-run it, or restore the file)"
    )


def verify_shards_once(
    data_dir: str | Path, manifest: Manifest, run_dir: str | Path, vocab_limit: int, show_progress: bool = True
) -> list[str]:
    """Fully check every shard this run has not verified yet (or that changed since); returns their
    file names. Raises DataError (one line) for the first bad shard; what was verified is kept."""
    data_dir, run_dir = Path(data_dir), Path(run_dir)
    record = load_record(run_dir)
    if record.get("data_dir") != str(data_dir.resolve()):
        record = {"data_dir": str(data_dir.resolve()), "shards": {}}
    done: dict[str, Any] = record["shards"]
    todo = []
    for shard in manifest.shards:
        path = data_dir / shard.file
        try:
            key = _stat_key(path)
        except OSError:
            raise DataError(f"{path}: shard file is missing") from None
        prev = done.get(shard.file)
        if not (prev and prev.get("sha256") == shard.sha256 and all(prev.get(k) == v for k, v in key.items())):
            todo.append((shard, key))
    if not todo:
        return []
    total = sum(k["size"] for _, k in todo)
    progress = None
    if show_progress and total >= _PROGRESS_BYTES:
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn

        progress = Progress(TextColumn("verifying shards"), BarColumn(), DownloadColumn(), TimeRemainingColumn())
        task = progress.add_task("verify", total=total)
        progress.start()
    failed = True
    try:
        for shard, key in todo:
            _check(data_dir, manifest, shard, vocab_limit)
            done[shard.file] = {"sha256": shard.sha256, **key, "verified_at": time.time()}
            if progress is not None:
                progress.advance(task, key["size"])
        failed = False
    finally:
        if progress is not None:
            progress.stop()
        if not failed or run_dir.is_dir():  # a refused first start leaves no run dir behind
            try:
                atomic_write(run_dir / RECORD_FILE, json.dumps(record, indent=1))
            except OSError as e:
                if not failed:
                    raise DataError(f"{run_dir / RECORD_FILE}: cannot write: {e.strerror or e}") from None
    return [s.file for s, _ in todo]
