"""`mltrain sample`: autoregressive generation from a run's checkpoint with a KV cache.

The prompt is encoded with the run's tokenizer after an EOS token (training data has EOS before
every document, so this reads as "a document that starts with the prompt"). Each step feeds only
the new token; the keys/values of earlier positions come from the cache. The context is capped
at the run's train.seq_len (the longest context the model was trained on): when it is full, the
cache is rebuilt from the last half of the tokens. Sampling runs on CPU with a torch.Generator
seeded with --seed, so a fixed seed gives the same tokens on any device; temperature 0 is greedy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mltrain.errors import ConfigError

if TYPE_CHECKING:
    from rich.console import Console

    from mltrain.infer.run_model import RunModel


@dataclass
class SampleResult:
    step: int
    prompt: str
    prompt_ids: list[int]
    new_ids: list[int]
    text: str
    stopped_at_eos: bool


def check_sampling(temperature: float, top_k: int, top_p: float, max_new_tokens: int) -> None:
    if temperature < 0:
        raise ConfigError(f"--temperature {temperature}: must be >= 0 (0 = greedy)")
    if top_k < 0:
        raise ConfigError(f"--top-k {top_k}: must be >= 0 (0 = off)")
    if not 0 < top_p <= 1:
        raise ConfigError(f"--top-p {top_p}: must be in (0, 1]")
    if max_new_tokens < 1:
        raise ConfigError(f"--max-new-tokens {max_new_tokens}: must be >= 1")


def next_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> int:
    """One token id from fp32 CPU logits [V]: greedy, or temperature + top-k + top-p (nucleus) sampling."""
    if temperature == 0:
        return int(torch.argmax(logits).item())
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass (the first stays)
        drop = (torch.cumsum(probs, dim=-1) - probs) >= top_p
        logits = logits.masked_fill(torch.zeros_like(drop).scatter(0, order, drop), float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator).item())


@torch.no_grad()
def generate(
    rm: RunModel,
    prompt_ids: Sequence[int],
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    context: int | None = None,
    stop_at_eos: bool = True,
    console: Console | None = None,
) -> tuple[list[int], bool]:
    """New token ids after `prompt_ids` (and whether EOS ended them), one forward per token."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from mltrain.model.transformer import KVCache

    check_sampling(temperature, top_k, top_p, max_new_tokens)
    cfg = rm.cfg.model
    ctx = min(context or rm.cfg.train.seq_len, cfg.max_seq_len)
    dtype = next(rm.model.parameters()).dtype
    gen = torch.Generator().manual_seed(seed)
    tokens = list(prompt_ids)[-ctx:]

    def prefill(ids: list[int]) -> tuple[KVCache, torch.Tensor]:
        cache = KVCache(cfg, 1, ctx, rm.device, dtype)
        x = torch.tensor([ids], dtype=torch.long, device=rm.device)
        return cache, rm.model(x, cache=cache)[0, -1]

    cache, logits = prefill(tokens)
    new: list[int] = []
    eos = False
    progress = Progress(
        TextColumn("sampling"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        disable=console is None,
        transient=True,
    )
    with progress:
        task = progress.add_task("sample", total=max_new_tokens)
        while len(new) < max_new_tokens:
            tok = next_token(logits.float().cpu(), temperature, top_k, top_p, gen)
            new.append(tok)
            tokens.append(tok)
            progress.advance(task)
            if stop_at_eos and tok == rm.eos_id:
                eos = True
                break
            if len(new) == max_new_tokens:
                break
            if cache.pos >= ctx:  # context full: restart the cache from the newest half
                tokens = tokens[-max(1, ctx // 2) :]
                cache, logits = prefill(tokens)
            else:
                x = torch.tensor([[tok]], dtype=torch.long, device=rm.device)
                logits = rm.model(x, cache=cache)[0, -1]
    return new, eos


def sample_run(
    run_dir: Path,
    prompt: str,
    step: int | None = None,
    max_new_tokens: int = 200,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    device: str = "auto",
    console: Console | None = None,
) -> SampleResult:
    from mltrain.data.tokenizer import encode_checked
    from mltrain.infer.run_model import load_run_model

    check_sampling(temperature, top_k, top_p, max_new_tokens)
    rm = load_run_model(run_dir, step, device)
    prompt_ids = [rm.eos_id, *encode_checked(rm.tokenizer, prompt, "--prompt")]
    new, eos = generate(rm, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, console=console)
    text = rm.tokenizer.decode(new[:-1] if eos else new, skip_special_tokens=True)
    return SampleResult(rm.step, prompt, prompt_ids, new, text, eos)
