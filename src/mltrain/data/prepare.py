"""`mltrain data prepare`: sources -> tokenizer -> EOS-separated, packed token shards + manifest.

Output of `<data.dir>/`:
  tokenizer.json (+ tokenizer.meta.json when trained), train_00000.bin ..., val_00000.bin ...,
  manifest.json (written last: its presence means the dir is complete).

The result depends only on the corpus, the tokenizer and the config, never on the number of
worker processes: documents are encoded in ordered chunks and packed in corpus order, and the
train/val split is a fixed-seed choice of whole documents holding `val_fraction` of the bytes,
or, when `data.val_sources` is set, exactly the documents of those files (train = `sources`).
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mltrain.config import DataConfig, RunConfig
from mltrain.data.manifest import MANIFEST_FILE, Counts, Manifest, ShardInfo, TokenizerInfo, save_manifest
from mltrain.data.shards import dtype_for_vocab, write_shard
from mltrain.data.sources import (
    BUILTIN_DEFAULT_CAP_BYTES,
    CorpusScan,
    Fingerprint,
    SourceStats,
    iter_documents,
    scan_corpus,
)
from mltrain.data.tokenizer import BUILTIN_TOKENIZERS, CHAR_TOKENIZER, TokenizerChoice, resolve_tokenizer
from mltrain.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console
    from tokenizers import Tokenizer

SPLIT_SEED = 0x5EED  # fixed: the split must not change when the training seed does
_CHUNK_BYTES = 1 << 20  # documents are sent to workers in ~1 MB chunks
_CHUNK_DOCS = 4096
_MIN_PARALLEL_BYTES = 2 << 20  # below this, process start-up costs more than it saves

# --------------------------------------------------------------------------- tokenizing


def encode_docs(tok: Tokenizer, docs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Encode a batch of documents -> (all ids concatenated as uint32, per-document lengths)."""
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    encs = encode(list(docs), add_special_tokens=False)
    lengths = np.fromiter((len(e.ids) for e in encs), dtype=np.int64, count=len(encs))
    if not encs:
        return np.zeros(0, dtype=np.uint32), lengths
    flat = np.concatenate([np.asarray(e.ids, dtype=np.uint32) for e in encs])
    return flat, lengths


_WORKER_TOKENIZER: Tokenizer | None = None


def _init_worker(tokenizer_json: str) -> None:
    # Each worker is one core: tokenizers' own thread pool would oversubscribe.
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    from tokenizers import Tokenizer

    global _WORKER_TOKENIZER
    _WORKER_TOKENIZER = Tokenizer.from_str(tokenizer_json)


def _encode_chunk(docs: list[str]) -> tuple[np.ndarray, np.ndarray]:
    assert _WORKER_TOKENIZER is not None
    return encode_docs(_WORKER_TOKENIZER, docs)


def _chunks(docs: Iterable[str]) -> Iterator[list[str]]:
    chunk: list[str] = []
    size = 0
    for doc in docs:
        chunk.append(doc)
        size += len(doc)
        if size >= _CHUNK_BYTES or len(chunk) >= _CHUNK_DOCS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def default_num_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


@contextmanager
def _tokenizers_parallelism(enabled: bool) -> Iterator[None]:
    """tokenizers reads TOKENIZERS_PARALLELISM at every batch call, so this scopes it."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if enabled else "false"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def iter_encoded(
    tok: Tokenizer, docs: Iterable[str], num_workers: int | None, total_bytes: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Yield (n_docs, ids, lengths) per chunk, in corpus order whatever num_workers is.

    None: one process, tokenizers' own Rayon thread pool on every core (fastest: no pickling,
    no process start-up). 1: one core. N > 1: N single-threaded spawned processes, for capping
    the cores used on a shared node.
    """
    if num_workers is None or num_workers <= 1 or total_bytes < _MIN_PARALLEL_BYTES:
        with _tokenizers_parallelism(num_workers != 1):
            for chunk in _chunks(docs):
                yield (len(chunk), *encode_docs(tok, chunk))
        return
    import multiprocessing as mp

    # spawn, not fork: the parent's tokenizers thread pool is not fork-safe.
    ctx = mp.get_context("spawn")
    with ctx.Pool(num_workers, initializer=_init_worker, initargs=(tok.to_str(),)) as pool:
        # Pool.imap would read the whole corpus ahead into its queue: feed it in bounded groups.
        it = _chunks(docs)
        while group := list(itertools.islice(it, 4 * num_workers)):
            for chunk, (ids, lengths) in zip(group, pool.imap(_encode_chunk, group), strict=True):
                yield len(chunk), ids, lengths


# --------------------------------------------------------------------------- packing


class _SplitWriter:
    """Accumulates one split's tokens and writes full shards of `shard_tokens` as they fill."""

    def __init__(self, split: str, data_dir: Path, dtype: np.dtype, shard_tokens: int) -> None:
        self.split, self.data_dir, self.dtype, self.shard_tokens = split, data_dir, dtype, shard_tokens
        self.pending: list[np.ndarray] = []
        self.pending_tokens = 0
        self.written_tokens = 0
        self.docs = 0
        self.doc_starts: dict[int, int] = {}  # shard index -> documents starting in it
        self.shards: list[ShardInfo] = []

    def add(self, tokens: np.ndarray, doc_lengths: np.ndarray) -> None:
        """tokens = documents of this split, each followed by EOS; doc_lengths include the EOS."""
        if tokens.size == 0:
            return
        starts = self.written_tokens + self.pending_tokens + np.concatenate(([0], np.cumsum(doc_lengths)[:-1]))
        for shard_idx, n in zip(*np.unique(starts // self.shard_tokens, return_counts=True), strict=True):
            self.doc_starts[int(shard_idx)] = self.doc_starts.get(int(shard_idx), 0) + int(n)
        self.docs += len(doc_lengths)
        self.pending.append(tokens)
        self.pending_tokens += tokens.size
        if self.pending_tokens >= self.shard_tokens:
            buf = np.concatenate(self.pending)
            n_full = buf.size // self.shard_tokens
            for i in range(n_full):
                self._write(buf[i * self.shard_tokens : (i + 1) * self.shard_tokens])
            rest = buf[n_full * self.shard_tokens :]
            self.pending, self.pending_tokens = ([rest] if rest.size else []), int(rest.size)

    def finish(self) -> None:
        if self.pending_tokens:
            self._write(np.concatenate(self.pending))
        self.pending, self.pending_tokens = [], 0

    def _write(self, tokens: np.ndarray) -> None:
        idx = len(self.shards)
        name = f"{self.split}_{idx:05d}.bin"
        sha = write_shard(self.data_dir / name, tokens, self.dtype)
        self.shards.append(
            ShardInfo(
                file=name, split=self.split, tokens=int(tokens.size), docs=self.doc_starts.get(idx, 0), sha256=sha
            )
        )
        self.written_tokens += int(tokens.size)


def choose_val_docs(doc_bytes: np.ndarray, val_fraction: float) -> np.ndarray:
    """Boolean mask of validation documents: whole documents in a fixed-seed random order until
    they hold `val_fraction` of the bytes; at least one, never all.

    By bytes, not document count: corpora mix tiny and huge documents, and a count-based 2%
    can leave a validation split too small for even one batch.
    """
    n_docs = len(doc_bytes)
    mask = np.zeros(n_docs, dtype=bool)
    if val_fraction <= 0 or n_docs < 2:
        return mask
    order = np.random.Generator(np.random.PCG64(SPLIT_SEED)).permutation(n_docs)
    cum = np.cumsum(np.asarray(doc_bytes, dtype=np.int64)[order])
    n_val = int(np.searchsorted(cum, val_fraction * cum[-1])) + 1  # first prefix reaching the target
    mask[order[: min(n_docs - 1, max(1, n_val))]] = True
    return mask


def val_config(dc: DataConfig) -> DataConfig | None:
    """The data config that reads `val_sources` (None when validation comes from val_fraction)."""
    if not dc.val_sources:
        return None
    return dc.model_copy(update={"sources": list(dc.val_sources), "val_sources": None})


def combined_fingerprint(train_fp: str, val_fp: str | None) -> str:
    """The corpus identity when validation has its own files: both fingerprints, in order."""
    if val_fp is None:
        return train_fp
    fp = Fingerprint()
    fp.add(f"train:{train_fp}")
    fp.add(f"val:{val_fp}")
    return fp.hexdigest()


def check_val_split(dc: DataConfig, n_docs: int) -> str | None:
    """Why a one-document corpus gets no validation split (the split takes whole documents), or None."""
    if dc.val_sources or dc.val_fraction <= 0 or n_docs >= 2:
        return None
    return (
        f"data.sources {dc.sources}: one document only, so val_fraction {dc.val_fraction} gives an empty "
        "validation split (the split takes whole documents); set data.val_sources to name validation "
        "files, or data.val_fraction: 0"
    )


def _remove_stale(data_dir: Path, keep: set[str]) -> None:
    for p in data_dir.glob("*.bin*"):
        if p.name not in keep and (p.name.startswith(("train_", "val_"))):
            p.unlink(missing_ok=True)


# --------------------------------------------------------------------------- runs that use the data dir


def _refuse_live_users(cfg: RunConfig, data_dir: Path) -> None:
    """A training run holding a live lease on this data dir (runs under cfg.base_dir) blocks prepare:
    rewriting shards under a reading loader corrupts that run. --force does not override this."""
    from mltrain.lease import describe, live_users_of_data

    live = live_users_of_data(data_dir, cfg.base_dir)
    if live:
        raise DataError(
            f"data.dir {data_dir} is in use by the training run {live[0]['run_dir']} ({describe(live[0])}); "
            "stop that run first (`mltrain stop`), or prepare into another data.dir"
        )


def _runs_reading(data_dir: Path, base_dir: str) -> list[str]:
    """Names of the runs under `<base_dir>/runs/` whose config reads `data_dir` and that have checkpoints
    (a resume of them needs the same shards)."""
    import yaml

    from mltrain import rundir

    target = data_dir.resolve()
    names = []
    for cfg_path in sorted((Path(base_dir) / rundir.RUNS_DIR).glob(f"*/{rundir.CONFIG_FILE}")):
        try:
            d = (yaml.safe_load(cfg_path.read_text()) or {}).get("data", {}).get("dir")
        except (OSError, yaml.YAMLError, AttributeError):
            continue
        if d and Path(d).resolve() == target and any((cfg_path.parent / rundir.CHECKPOINTS_DIR).glob("step_*")):
            names.append(cfg_path.parent.name)
    return names


def _changed_fields(cfg: RunConfig, data_dir: Path, corpus_fingerprint: str, bpe_vocab: int) -> list[str]:
    """What differs between the existing manifest and what this prepare would write ([] = same data)."""
    import json

    from mltrain.data.manifest import load_manifest
    from mltrain.data.tokenizer import TOKENIZER_META_FILE, TRAINED_SOURCE

    dc = cfg.data
    try:
        old = load_manifest(data_dir)
    except DataError:
        return ["manifest"]
    changed = [
        name
        for name, a, b in (
            ("corpus_fingerprint", old.corpus_fingerprint, corpus_fingerprint),
            ("shard_tokens", old.shard_tokens, dc.shard_tokens),
            ("val_fraction", old.val_fraction, dc.val_fraction),
            ("tokenizer", old.tokenizer.source, dc.tokenizer or TRAINED_SOURCE),
        )
        if a != b
    ]
    if not dc.tokenizer and "tokenizer" not in changed:
        try:
            meta = json.loads((data_dir / TOKENIZER_META_FILE).read_text())
        except (OSError, ValueError):
            meta = {}
        if meta.get("vocab_size") != bpe_vocab:
            changed.append("bpe_vocab_size")
    return changed


def _refuse_rewrite_under_runs(
    cfg: RunConfig, data_dir: Path, corpus_fingerprint: str, bpe_vocab: int, force: bool
) -> None:
    """Refuse to change a prepared data dir that runs with checkpoints read (their resume would fail,
    e.g. "num_samples was 8505 ... now 417"), unless --force. Re-preparing the same data is allowed."""
    from mltrain.data.manifest import MANIFEST_FILE

    if force or not (data_dir / MANIFEST_FILE).is_file():
        return
    runs = _runs_reading(data_dir, cfg.base_dir)
    if not runs:
        return
    changed = _changed_fields(cfg, data_dir, corpus_fingerprint, bpe_vocab)
    if changed:
        raise DataError(
            f"data.dir {data_dir}: preparing would change the data ({', '.join(changed)} differ) that the "
            f"run(s) {', '.join(runs[:3])}{' ...' if len(runs) > 3 else ''} resume from; use a new data.dir, "
            "or pass --force to rewrite it (those runs then cannot resume)"
        )


def created_now() -> str:
    """The manifest's `created` time: now, or SOURCE_DATE_EPOCH when set (reproducible builds: two
    prepares of the same input then write byte-identical manifests)."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    when = datetime.fromtimestamp(int(epoch), UTC) if epoch and epoch.isdigit() else datetime.now(UTC)
    return when.isoformat(timespec="seconds")


# --------------------------------------------------------------------------- entry point


def prepare_data(cfg: RunConfig, console: Console | None = None, force: bool = False) -> Manifest:
    """Tokenize and pack `cfg.data.sources` into `cfg.data.dir`; return the written manifest.

    Refuses (before writing anything) when a live training run reads the data dir, or when the data
    would change under runs that have checkpoints from it (`force` allows the latter only).
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    t0 = time.perf_counter()
    dc = cfg.data
    data_dir = Path(dc.dir)
    model_vocab = cfg.model.vocab_size
    bpe_vocab = _refuse_bad_start(cfg, data_dir)

    def say(msg: str) -> None:
        if console is not None:
            console.print(msg, highlight=False)

    say(f"[bold]prepare[/] {', '.join(dc.sources)} -> {data_dir}")
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=True,  # the bars go, the summary lines printed with them stay
    )
    with progress:
        reading = progress.add_task("reading sources", total=None)

        def on_doc(stats: SourceStats) -> None:
            if stats.docs % 64 == 0:
                progress.update(
                    reading, completed=stats.docs, description=f"reading sources ({stats.bytes / 1e6:.1f} MB)"
                )

        corpus = scan_corpus(dc, on_doc=on_doc)  # pass 1: count + fingerprint, constant memory
        vc = val_config(dc)
        val_corpus: CorpusScan | None = scan_corpus(vc) if vc is not None else None
        split_note = check_val_split(dc, corpus.docs)
        fingerprint = combined_fingerprint(corpus.fingerprint, val_corpus.fingerprint if val_corpus else None)
        cap_note = (
            f"data.max_source_bytes={dc.max_source_bytes}"
            if dc.max_source_bytes
            else f"builtin corpus default {BUILTIN_DEFAULT_CAP_BYTES / 1e6:.0f} MB"
        )
        st = corpus.stats
        _refuse_rewrite_under_runs(cfg, data_dir, corpus.fingerprint, bpe_vocab, force)
        progress.update(reading, total=st.docs, completed=st.docs, description=f"read {st.bytes / 1e6:.2f} MB")
        say(
            f"  read {st.docs} documents ({st.bytes / 1e6:.2f} MB) from {st.files} files"
            + (f" [dim](capped: {cap_note})[/]" if st.capped else "")
        )
        if val_corpus is not None:
            vs = val_corpus.stats
            say(f"  validation: {vs.docs} documents ({vs.bytes / 1e6:.2f} MB) from {', '.join(dc.val_sources or [])}")
        if split_note:
            say(f"  [yellow]warning: {split_note}[/]")
        if st.skipped_docs:
            reasons = ", ".join(f"{n} {r}" for r, n in sorted(st.skipped_reasons.items()))
            say(f"  [yellow]skipped {st.skipped_docs} documents ({st.skipped_files} whole files): {reasons}[/]")
            for ex in st.examples:
                say(f"    [dim]{ex}[/]")

        training = progress.add_task("tokenizer" if dc.tokenizer else "tokenizer (byte-level BPE)", total=None)

        def tokenizer_docs() -> Iterator[str]:
            # a char vocabulary must cover the validation text too; a BPE is trained on train only
            yield from iter_documents(dc)
            if vc is not None and dc.tokenizer == CHAR_TOKENIZER:
                yield from iter_documents(vc)

        choice = resolve_tokenizer(
            dc.tokenizer,
            tokenizer_docs,
            fingerprint,
            bpe_vocab,
            data_dir,
            max_vocab_size=model_vocab,
        )
        progress.update(training, total=1, completed=1)
        how = (
            "built"
            if dc.tokenizer in BUILTIN_TOKENIZERS
            else "loaded"
            if dc.tokenizer
            else ("reused cached byte-level BPE" if choice.cached else "trained byte-level BPE")
        )
        say(
            f"  tokenizer: {how}{' ' + dc.tokenizer if dc.tokenizer else ''} (vocab {choice.vocab_size}, "
            f"eos {choice.eos_token!r}={choice.eos_id})"
        )
        # From here on shards change: a half-written dir must not look complete, so the old
        # manifest goes first (the new one is written last).
        (data_dir / MANIFEST_FILE).unlink(missing_ok=True)

        dtype = dtype_for_vocab(choice.vocab_size)
        n_val_docs = val_corpus.docs if val_corpus is not None else 0
        if val_corpus is not None:  # train = every `sources` document, val = every `val_sources` one
            val_mask = np.concatenate([np.zeros(corpus.docs, dtype=bool), np.ones(n_val_docs, dtype=bool)])
        else:
            val_mask = choose_val_docs(corpus.doc_bytes, dc.val_fraction)
        total_docs = corpus.docs + n_val_docs
        writers = {s: _SplitWriter(s, data_dir, dtype, dc.shard_tokens) for s in ("train", "val")}
        num_workers = dc.num_workers
        how_many = f"{num_workers} processes" if num_workers else f"{default_num_workers()} threads"
        task = progress.add_task(f"tokenizing ({how_many})", total=total_docs)
        first = 0
        again, again_val = Fingerprint(), Fingerprint()

        def stream() -> Iterator[str]:  # pass 2: the same documents, checked to be the same
            for doc in iter_documents(dc):
                again.add(doc)
                yield doc
            if vc is not None:
                for doc in iter_documents(vc):
                    again_val.add(doc)
                    yield doc

        total_bytes = st.bytes + (val_corpus.stats.bytes if val_corpus is not None else 0)
        for n, ids, lengths in iter_encoded(choice.tokenizer, stream(), num_workers, total_bytes):
            if first + n > total_docs:
                raise DataError(f"data.sources {dc.sources}: the sources changed while prepare was reading them")
            with_eos = np.insert(ids, np.cumsum(lengths), choice.eos_id)  # EOS after every document
            lens_eos = lengths + 1
            doc_val = val_mask[first : first + n]
            tok_val = np.repeat(doc_val, lens_eos)
            writers["train"].add(with_eos[~tok_val], lens_eos[~doc_val])
            writers["val"].add(with_eos[tok_val], lens_eos[doc_val])
            first += n
            progress.advance(task, n)
        again_fp = combined_fingerprint(again.hexdigest(), again_val.hexdigest() if vc is not None else None)
        if first != total_docs or again_fp != fingerprint:
            raise DataError(
                f"data.sources {dc.sources}: the sources changed while prepare was reading them; run it again"
            )
        for w in writers.values():
            w.finish()

    shards = writers["train"].shards + writers["val"].shards
    counts = Counts(
        files=st.files + (val_corpus.stats.files if val_corpus is not None else 0),
        docs=total_docs,
        train_docs=writers["train"].docs,
        val_docs=writers["val"].docs,
        skipped_docs=st.skipped_docs,
        skipped_files=st.skipped_files,
        skipped_reasons=dict(sorted(st.skipped_reasons.items())),
        bytes=total_bytes,
        train_tokens=writers["train"].written_tokens,
        val_tokens=writers["val"].written_tokens,
    )
    manifest = commit_manifest(data_dir, dc, choice, dtype, fingerprint, counts, shards)

    dt = time.perf_counter() - t0
    say(
        f"  [green]done[/] {counts.docs} docs ({counts.train_docs} train / {counts.val_docs} val), "
        f"{counts.train_tokens + counts.val_tokens:,} tokens ({counts.train_tokens:,} train / "
        f"{counts.val_tokens:,} val), {len(shards)} shards ({dtype.name}) in {dt:.1f}s -> {data_dir / MANIFEST_FILE}"
    )
    return manifest


def commit_manifest(
    data_dir: Path,
    dc: DataConfig,
    choice: TokenizerChoice,
    dtype: np.dtype,
    fingerprint: str,
    counts: Counts,
    shards: list[ShardInfo],
) -> Manifest:
    """Write manifest.json for freshly written shards and remove shards it no longer lists: one writer for the
    local and the Spark engine, so the two give byte-identical manifests."""
    manifest = Manifest(
        created=created_now(),
        dtype=dtype.name,
        vocab_size=choice.vocab_size,
        eos_id=choice.eos_id,
        tokenizer=TokenizerInfo(
            sha256=choice.sha256,
            vocab_size=choice.vocab_size,
            eos_id=choice.eos_id,
            eos_token=choice.eos_token,
            source=choice.source,
        ),
        sources=list(dc.sources),
        corpus_fingerprint=fingerprint,
        shard_tokens=dc.shard_tokens,
        val_fraction=0.0 if dc.val_sources else dc.val_fraction,
        val_sources=list(dc.val_sources) if dc.val_sources else None,
        counts=counts,
        shards=shards,
    )
    save_manifest(data_dir, manifest)
    _remove_stale(data_dir, {s.file for s in shards})
    return manifest


def _refuse_bad_start(cfg: RunConfig, data_dir: Path) -> int:
    """The checks both engines make before reading a byte: a BPE that fits the model, no live run on the dir.
    Returns the BPE vocabulary size to train (data.bpe_vocab_size, else the model's)."""
    dc, model_vocab = cfg.data, cfg.model.vocab_size
    bpe_vocab = dc.bpe_vocab_size or model_vocab
    if not dc.tokenizer and bpe_vocab > model_vocab:
        raise DataError(
            f"data.bpe_vocab_size {bpe_vocab} is larger than model.vocab_size {model_vocab}; "
            "token ids would not fit the embedding"
        )
    _refuse_live_users(cfg, data_dir)
    return bpe_vocab
