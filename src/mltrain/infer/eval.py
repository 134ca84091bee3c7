"""`mltrain eval`: mean cross-entropy and perplexity of a run's checkpoint on given text files.

Method (also in `mltrain eval --help`): every document of the files (a .txt file is one document,
.jsonl/.parquet one per record, as in `data.sources`) is encoded with the run's tokenizer and
followed by EOS, and the documents are concatenated into one stream, exactly as `data prepare`
packs training data. The stream of N tokens is cut into non-overlapping windows of the run's
`train.seq_len` T: window k feeds tokens [kT, kT+T) and is scored on the next token of each,
[kT+1, kT+T+1). The last window is shorter when N-1 is not a multiple of T, so every token but
the first is scored exactly once; context starts afresh at each window and runs across document
boundaries (as in training). Loss = sum of the token losses / number of scored tokens (nats per
token); perplexity = exp(loss).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from mltrain.errors import DataError

if TYPE_CHECKING:
    from rich.console import Console
    from tokenizers import Tokenizer

    from mltrain.infer.run_model import RunModel


@dataclass
class EvalResult:
    run: str
    step: int
    files: list[str]
    documents: int
    tokens: int
    scored_tokens: int
    windows: int
    seq_len: int
    loss: float
    perplexity: float
    device: str


def encode_files(files: Sequence[str], tok: Tokenizer, eos_id: int) -> tuple[list[int], int]:
    """All documents of `files`, each followed by EOS, as one token stream; and the document count."""
    from mltrain.config import DataConfig
    from mltrain.data.sources import iter_documents
    from mltrain.data.tokenizer import encode_checked

    stream: list[int] = []
    docs = 0
    dc = DataConfig(sources=list(files), max_source_bytes=None)
    for i, doc in enumerate(iter_documents(dc)):
        stream.extend(encode_checked(tok, doc, f"{', '.join(files)} (document {i + 1})"))
        stream.append(eos_id)
        docs += 1
    if docs == 0:
        raise DataError(f"--data {' '.join(files)}: no non-empty document to evaluate")
    return stream, docs


def windows(n_tokens: int, seq_len: int) -> Iterator[tuple[int, int]]:
    """(start, length) of each input window: non-overlapping, the last one possibly shorter."""
    for start in range(0, n_tokens - 1, seq_len):
        yield start, min(seq_len, n_tokens - 1 - start)


@torch.no_grad()
def evaluate_stream(
    rm: RunModel, stream: Sequence[int], seq_len: int, batch_size: int = 8, console: Console | None = None
) -> tuple[float, int, int]:
    """(sum of token cross-entropies in nats, scored tokens, windows) over `stream`."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    data = torch.tensor(stream, dtype=torch.long)
    spans = list(windows(len(stream), seq_len))
    total = torch.zeros((), dtype=torch.float64, device=rm.device)
    scored = 0
    progress = Progress(
        TextColumn("evaluating"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        disable=console is None,
        transient=True,
    )
    with progress:
        task = progress.add_task("eval", total=len(spans))
        i = 0
        while i < len(spans):
            # full windows go in batches; a shorter last window goes alone (no padding needed)
            length = spans[i][1]
            group = [spans[i]]
            while len(group) < batch_size and i + len(group) < len(spans) and spans[i + len(group)][1] == length:
                group.append(spans[i + len(group)])
            x = torch.stack([data[s : s + length] for s, _ in group]).to(rm.device)
            y = torch.stack([data[s + 1 : s + 1 + length] for s, _ in group]).to(rm.device)
            logits = rm.model(x)
            total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").double()
            scored += y.numel()
            i += len(group)
            progress.advance(task, len(group))
    return float(total.item()), scored, len(spans)


def eval_run(
    run_dir: Path,
    files: Sequence[str],
    step: int | None = None,
    device: str = "auto",
    batch_size: int = 8,
    console: Console | None = None,
) -> EvalResult:
    from mltrain.infer.run_model import load_run_model

    if not files:
        raise DataError("--data: name at least one file to evaluate on")
    rm = load_run_model(run_dir, step, device)
    seq_len = rm.cfg.train.seq_len
    stream, docs = encode_files(files, rm.tokenizer, rm.eos_id)
    if len(stream) < 2:
        raise DataError(f"--data {' '.join(files)}: fewer than 2 tokens, nothing to score")
    nll, scored, n_windows = evaluate_stream(rm, stream, seq_len, batch_size, console)
    loss = nll / scored
    return EvalResult(
        run=str(run_dir),
        step=rm.step,
        files=list(files),
        documents=docs,
        tokens=len(stream),
        scored_tokens=scored,
        windows=n_windows,
        seq_len=seq_len,
        loss=loss,
        perplexity=math.exp(loss),
        device=str(rm.device),
    )


def result_dict(r: EvalResult) -> dict:
    return asdict(r)
