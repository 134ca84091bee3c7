"""`mltrain eval`'s scoring, without a run dir: windows cover every token but the first exactly once
(the last window may be one token long), batching does not change the sum, and the stream is the
documents joined with EOS. The reference is computed token by token, independently of `windows()`."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from mltrain.config import ModelConfig
from mltrain.errors import DataError
from mltrain.infer.eval import encode_files, evaluate_stream, windows
from mltrain.model.transformer import Transformer

CFG = ModelConfig(
    vocab_size=40, hidden_size=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=48, max_seq_len=64
)
T = 8


@pytest.fixture(scope="module")
def rm():
    torch.manual_seed(0)
    model = Transformer(CFG).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # far from uniform logits: every token's loss differs
    return SimpleNamespace(model=model, device=torch.device("cpu"))


@pytest.mark.parametrize(
    "n, want",
    [
        (2, [(0, 1)]),  # two tokens: one window scoring one token
        (9, [(0, 8)]),  # N-1 = T: one full window
        (10, [(0, 8), (8, 1)]),  # N-1 = T+1: a final window of exactly one scored token
        (17, [(0, 8), (8, 8)]),
        (18, [(0, 8), (8, 8), (16, 1)]),
        (20, [(0, 8), (8, 8), (16, 3)]),
        (1, []),
        (0, []),
    ],
)
def test_windows_cover_every_scored_token_once(n, want):
    got = list(windows(n, T))
    assert got == want
    assert sum(length for _, length in got) == max(0, n - 1)


_REFERENCE: dict[tuple[int, ...], tuple[float, int]] = {}


@torch.no_grad()
def _reference(model: Transformer, stream: list[int]) -> tuple[float, int]:
    """Token i+1 scored from the context that starts at the window boundary at or before i."""
    if tuple(stream) in _REFERENCE:  # the same stream for every batch size
        return _REFERENCE[tuple(stream)]
    total = 0.0
    for i in range(len(stream) - 1):
        start = (i // T) * T
        logits = model(torch.tensor([stream[start : i + 1]]))[0, -1]
        total += F.cross_entropy(logits[None].double(), torch.tensor([stream[i + 1]])).item()
    _REFERENCE[tuple(stream)] = total, len(stream) - 1
    return _REFERENCE[tuple(stream)]


@pytest.mark.parametrize("n", [2, 9, 10, 18, 26, 29])
@pytest.mark.parametrize("batch_size", [1, 2, 8])
def test_evaluate_stream_scores_every_token_including_a_last_single_one(rm, n, batch_size):
    g = torch.Generator().manual_seed(n)
    stream = torch.randint(0, CFG.vocab_size, (n,), generator=g).tolist()
    nll, scored, n_windows = evaluate_stream(rm, stream, T, batch_size)
    want, want_scored = _reference(rm.model, stream)
    assert scored == want_scored == n - 1
    assert n_windows == -(-(n - 1) // T)
    assert nll == pytest.approx(want, rel=1e-5)


def test_the_last_single_token_changes_the_result(rm):
    """Scoring a stream of T+2 tokens is scoring T+1 tokens plus the last one's loss (not ignoring it)."""
    stream = list(range(3, 3 + T + 2))
    nll, scored, _ = evaluate_stream(rm, stream, T)
    head, head_scored, _ = evaluate_stream(rm, stream[: T + 1], T)
    last = F.cross_entropy(rm.model(torch.tensor([stream[T : T + 1]]))[0, -1:].double(), torch.tensor([stream[-1]]))
    assert scored == head_scored + 1
    assert nll == pytest.approx(head + last.item(), rel=1e-6) and nll > head


def test_encode_files_joins_documents_with_eos(tmp_path):
    from mltrain.data.tokenizer import build_char_tokenizer

    tok = build_char_tokenizer(["abcdef"])  # ids a=0 .. f=5, then EOS
    eos = tok.token_to_id("a") + 6
    (tmp_path / "a.txt").write_text("abc")
    (tmp_path / "b.jsonl").write_text('{"text": "de"}\n{"text": "f"}\n')
    stream, docs = encode_files([str(tmp_path / "a.txt"), str(tmp_path / "b.jsonl")], tok, eos)
    assert (stream, docs) == ([0, 1, 2, eos, 3, 4, eos, 5, eos], 3)
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(DataError, match=r"--data .*empty.txt: no non-empty document to evaluate"):
        encode_files([str(tmp_path / "empty.txt")], tok, eos)


def test_eval_and_sample_refuse_bad_arguments_before_loading_anything(tmp_path):
    from mltrain.errors import ConfigError
    from mltrain.infer.eval import eval_run
    from mltrain.infer.sample import sample_run

    with pytest.raises(DataError, match=r"^--data: name at least one file to evaluate on$"):
        eval_run(tmp_path / "no-such-run", [])
    with pytest.raises(ConfigError, match=r"^--temperature -1.0: must be >= 0"):
        sample_run(tmp_path / "no-such-run", "x", temperature=-1.0)
