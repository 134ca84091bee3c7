"""`mltrain data prepare --engine spark`: the same shards and manifest as the local path, byte for byte,
with tokenizing and packing on Spark executors.

The driver streams the corpus once with the local readers (the corpus fingerprint, each document's
size for the train/val split, and which documents each file contributes, caps included) and loads or
trains the tokenizer exactly as `prepare` does: that pass is I/O, not tokenizing. Executors then read
their files again with the same readers, encode with HF tokenizers (one tokenizer per task), cut each
document's tokens at the shard boundaries the global offsets give, and write each shard with the
shard module's writer. The data dir must therefore be a path every executor sees (shared FS).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mltrain.config import DataConfig, RunConfig
from mltrain.data.manifest import MANIFEST_FILE, Counts, Manifest, ShardInfo
from mltrain.data.prepare import (
    _refuse_bad_start,
    _refuse_rewrite_under_runs,
    choose_val_docs,
    combined_fingerprint,
    commit_manifest,
    encode_docs,
    val_config,
)
from mltrain.data.shards import dtype_for_vocab, write_shard
from mltrain.data.sources import (
    BUILTIN_STDLIB,
    FILE_SUFFIXES,
    Fingerprint,
    SourceStats,
    _empty_corpus_error,
    builtin_stdlib_files,
    iter_documents,
    resolve_source,
)
from mltrain.data.tokenizer import CHAR_TOKENIZER, resolve_tokenizer
from mltrain.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console

_ENCODE_BATCH = 256


def _units(dc: DataConfig) -> list[str]:
    """The files `iter_documents` opens, in the order it opens them (its stats.files counts them)."""
    from mltrain.storage.source import list_s3_source

    out: list[str] = []
    for spec in dc.sources:
        if spec == BUILTIN_STDLIB:
            out += [str(p) for p in builtin_stdlib_files()]
        elif spec.startswith("hf:") or spec.startswith("builtin:"):
            raise DataError(f"data.sources: {spec!r}: --engine spark reads files and s3:// only; use --engine local")
        elif spec.startswith("s3://"):
            out += [url for url, _ in list_s3_source(spec, FILE_SUFFIXES)]
        else:
            out += [str(p) for p in resolve_source(spec)]
    return out


class _Scan:
    """The local scan (same fingerprint and sizes as prepare's), plus how many documents each file gave."""

    def __init__(self, dc: DataConfig) -> None:
        self.stats = SourceStats()
        fp = Fingerprint()
        sizes: list[int] = []
        per_file: dict[int, int] = {}
        seen = 0
        for doc in iter_documents(dc, self.stats):
            fp.add(doc)
            sizes.append(self.stats.bytes - seen)
            seen = self.stats.bytes
            per_file[self.stats.files - 1] = per_file.get(self.stats.files - 1, 0) + 1
        if self.stats.docs == 0:
            raise _empty_corpus_error(dc, self.stats)
        self.docs = self.stats.docs
        self.doc_bytes = np.asarray(sizes, dtype=np.int64)
        self.fingerprint = fp.hexdigest()
        self.per_file = per_file


# --------------------------------------------------------------------------- tasks (run on executors)


def _encode_task(tok_json: str, text_field: str, env: dict[str, str]) -> Any:
    def run(units: Iterable[tuple[int, str, int, int]]) -> Iterator[tuple[int, bytes]]:
        """(global doc index, uint32 ids) for the first `take` documents of each unit, in order."""
        os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one task per core already
        from tokenizers import Tokenizer

        from mltrain.data.curate.readers import read_unit

        tok = Tokenizer.from_str(tok_json)
        for _idx, url, start, take in units:
            batch: list[str] = []
            done = 0
            for doc in read_unit(url, text_field, SourceStats(), env):
                if done + len(batch) >= take:
                    break
                batch.append(doc)
                if len(batch) == _ENCODE_BATCH:
                    yield from _encoded(tok, batch, start + done)
                    done += len(batch)
                    batch = []
            if batch:
                yield from _encoded(tok, batch, start + done)

    return run


def _encoded(tok: Any, docs: list[str], first: int) -> Iterator[tuple[int, bytes]]:
    ids, lengths = encode_docs(tok, docs)
    ends = np.cumsum(lengths)
    for i, (a, b) in enumerate(zip(ends - lengths, ends, strict=True)):
        yield first + i, ids[a:b].tobytes()


def _piece_task(val_mask: Any, starts: Any, shard_tokens: int, eos: int) -> Any:
    def run(rows: Iterable[tuple[int, bytes]]) -> Iterator[tuple[tuple[int, int], tuple[int, bytes, int]]]:
        """Each document's tokens + EOS, cut at shard boundaries: ((split, shard), (offset, tokens, starts))."""
        mask, offsets = val_mask.value, starts.value
        for g, raw in rows:
            split = int(mask[g])
            tokens = np.append(np.frombuffer(raw, dtype=np.uint32), np.uint32(eos))
            pos = int(offsets[g])
            first = True
            while tokens.size:
                shard, within = divmod(pos, shard_tokens)
                n = min(tokens.size, shard_tokens - within)
                yield (split, shard), (within, tokens[:n].tobytes(), int(first))
                tokens, pos, first = tokens[n:], pos + n, False

    return run


def _write_task(data_dir: str, dtype: str, shard_tokens: int, sizes: dict[tuple[int, int], int]) -> Any:
    def run(items: Iterable[tuple[tuple[int, int], Any]]) -> Iterator[dict[str, Any]]:
        groups: dict[tuple[int, int], list] = {}
        for key, piece in items:
            groups.setdefault(key, []).append(piece)
        for (split, shard), pieces in sorted(groups.items()):
            pieces.sort()
            tokens = np.concatenate([np.frombuffer(p[1], dtype=np.uint32) for p in pieces])
            if tokens.size != sizes[(split, shard)]:
                raise DataError(f"shard {split}/{shard}: {tokens.size} tokens packed, {sizes[(split, shard)]} expected")
            name = f"{'val' if split else 'train'}_{shard:05d}.bin"
            sha = write_shard(Path(data_dir) / name, tokens, np.dtype(dtype))
            yield {
                "file": name,
                "split": "val" if split else "train",
                "tokens": int(tokens.size),
                "docs": sum(p[2] for p in pieces),
                "sha256": sha,
            }

    return run


# --------------------------------------------------------------------------- driver


def prepare_data_spark(
    cfg: RunConfig,
    master: str | None = None,
    spark_conf: dict[str, str] | None = None,
    console: Console | None = None,
    force: bool = False,
) -> Manifest:
    """`prepare_data` with tokenizing and packing on Spark; same checks, same output."""
    from mltrain.data.curate.readers import driver_aws_env
    from mltrain.data.curate.session import spark_session, task_errors, under_spark_submit

    t0 = time.perf_counter()
    dc = cfg.data
    data_dir = Path(dc.dir)
    model_vocab = cfg.model.vocab_size
    bpe_vocab = _refuse_bad_start(cfg, data_dir)

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg, highlight=False)

    vc = val_config(dc)
    groups = [(dc, _units(dc))] + ([(vc, _units(vc))] if vc is not None else [])
    say(f"[bold]prepare (spark)[/] {', '.join(dc.sources)} -> {data_dir}")
    scans = [_Scan(g) for g, _ in groups]
    corpus = scans[0]
    val_scan = scans[1] if vc is not None else None
    fingerprint = combined_fingerprint(corpus.fingerprint, val_scan.fingerprint if val_scan else None)
    _refuse_rewrite_under_runs(cfg, data_dir, corpus.fingerprint, bpe_vocab, force)
    st = corpus.stats
    say(f"  read {st.docs} documents ({st.bytes / 1e6:.2f} MB) from {st.files} files (driver scan)")

    def tokenizer_docs() -> Iterator[str]:
        yield from iter_documents(dc)
        if vc is not None and dc.tokenizer == CHAR_TOKENIZER:
            yield from iter_documents(vc)

    choice = resolve_tokenizer(
        dc.tokenizer, tokenizer_docs, fingerprint, bpe_vocab, data_dir, max_vocab_size=model_vocab
    )
    (data_dir / MANIFEST_FILE).unlink(missing_ok=True)
    dtype = dtype_for_vocab(choice.vocab_size)
    n_val = val_scan.docs if val_scan is not None else 0
    if val_scan is not None:
        val_mask = np.concatenate([np.zeros(corpus.docs, dtype=bool), np.ones(n_val, dtype=bool)])
    else:
        val_mask = choose_val_docs(corpus.doc_bytes, dc.val_fraction)
    total_docs = corpus.docs + n_val

    # (unit index, url, first global doc index, documents to take) for every file that gave documents
    units: list[tuple[int, str, int, int]] = []
    base = 0
    for (_g, files), scan in zip(groups, scans, strict=True):
        start = base
        for i, url in enumerate(files):
            take = scan.per_file.get(i, 0)
            if take:
                units.append((len(units), url, start, take))
                start += take
        base += scan.docs

    with (
        spark_session(master or (None if under_spark_submit() else "local[*]"), spark_conf) as spark,
        task_errors("prepare --engine spark"),
    ):
        sc = spark.sparkContext
        env = driver_aws_env(sc.master)
        slices = max(1, min(len(units), sc.defaultParallelism * 4))
        enc = (
            sc.parallelize(units, slices)
            .mapPartitions(_encode_task(choice.tokenizer.to_str(), dc.text_field, env))
            .persist()
        )
        try:
            lengths = np.zeros(total_docs, dtype=np.int64)
            for g, n in enc.map(lambda r: (r[0], len(r[1]) // 4 + 1)).collect():
                lengths[g] = n
            starts = np.zeros(total_docs, dtype=np.int64)
            split_tokens = {}
            for split, m in ((0, ~val_mask), (1, val_mask)):
                cum = np.cumsum(lengths[m])
                starts[m] = cum - lengths[m]
                split_tokens[split] = int(cum[-1]) if cum.size else 0
            sizes = {}
            for split, n in split_tokens.items():
                for shard in range(-(-n // dc.shard_tokens)):
                    sizes[(split, shard)] = min(dc.shard_tokens, n - shard * dc.shard_tokens)
            order = {key: i for i, key in enumerate(sorted(sizes))}
            b_mask, b_starts = sc.broadcast(val_mask), sc.broadcast(starts)
            data_dir.mkdir(parents=True, exist_ok=True)
            infos = (
                enc.mapPartitions(_piece_task(b_mask, b_starts, dc.shard_tokens, choice.eos_id))
                .partitionBy(max(1, len(order)), lambda key: order[key])
                .mapPartitions(_write_task(str(data_dir.resolve()), dtype.name, dc.shard_tokens, sizes))
                .collect()
            )
        finally:
            enc.unpersist()
    shards = sorted((ShardInfo(**i) for i in infos), key=lambda s: (s.split != "train", s.file))
    counts = Counts(
        files=st.files + (val_scan.stats.files if val_scan is not None else 0),
        docs=total_docs,
        train_docs=int((~val_mask).sum()),
        val_docs=int(val_mask.sum()),
        skipped_docs=st.skipped_docs,
        skipped_files=st.skipped_files,
        skipped_reasons=dict(sorted(st.skipped_reasons.items())),
        bytes=st.bytes + (val_scan.stats.bytes if val_scan is not None else 0),
        train_tokens=split_tokens[0],
        val_tokens=split_tokens[1],
    )
    manifest = commit_manifest(data_dir, dc, choice, dtype, fingerprint, counts, shards)
    say(
        f"  [green]done[/] {counts.docs} docs, {counts.train_tokens + counts.val_tokens:,} tokens, {len(shards)} "
        f"shards ({dtype.name}) on Spark {master or 'local[*]'} in {time.perf_counter() - t0:.1f}s -> "
        f"{data_dir / MANIFEST_FILE}"
    )
    return manifest
