"""KV cache: incremental decoding gives the full forward's logits; sampling controls behave."""

from __future__ import annotations

import pytest
import torch

from mltrain.config import ModelConfig
from mltrain.errors import ConfigError
from mltrain.infer.sample import generate, next_token
from mltrain.model.transformer import KVCache, Transformer

CFG = ModelConfig(
    vocab_size=50,
    hidden_size=32,
    n_layers=2,
    n_heads=4,
    n_kv_heads=2,
    ffn_hidden_size=48,
    max_seq_len=64,
    qkv_bias=True,
)


@pytest.fixture(scope="module")
def model() -> Transformer:
    torch.manual_seed(0)
    m = Transformer(CFG).eval()
    with torch.no_grad():
        for p in m.parameters():  # random biases/norms too, so a wrong position or mask shows
            p.add_(0.05 * torch.randn_like(p))
    return m


@torch.no_grad()
def test_cached_decoding_matches_full_forward(model: Transformer) -> None:
    ids = torch.randint(0, CFG.vocab_size, (2, 20))
    full = model(ids)
    cache = KVCache(CFG, 2, 24, "cpu", torch.float32)
    parts = [model(ids[:, :7], cache=cache)]  # prefill (causal)
    parts.append(model(ids[:, 7:12], cache=cache))  # a block after cached positions (explicit mask)
    parts += [model(ids[:, t : t + 1], cache=cache) for t in range(12, 20)]  # one token at a time
    assert cache.pos == 20
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="KV cache holds 24 positions, 26 needed"):
        model(ids[:, :6], cache=cache)


def test_next_token_controls() -> None:
    logits = torch.tensor([0.0, 3.0, 2.5, -1.0, 2.9])
    g = torch.Generator().manual_seed(0)
    assert next_token(logits, 0.0, 0, 1.0, g) == 1  # greedy
    assert {next_token(logits, 1.0, 1, 1.0, g) for _ in range(20)} == {1}  # top-k 1 is greedy
    assert {next_token(logits, 1.0, 0, 0.01, g) for _ in range(20)} == {1}  # tiny nucleus is greedy
    assert {next_token(logits, 5.0, 2, 1.0, g) for _ in range(200)} == {1, 4}  # only the 2 best
    # probabilities 0.388, 0.351, 0.235, ...: the nucleus is the smallest top set holding top_p
    assert {next_token(logits, 1.0, 0, 0.7, g) for _ in range(300)} == {1, 4}
    assert {next_token(logits, 1.0, 0, 0.8, g) for _ in range(300)} == {1, 2, 4}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_with_sign_folded_sin_is_bitwise_hf_rotate_half(dtype: torch.dtype) -> None:
    """apply_rope's one-roll form must give exactly HF's x*cos + rotate_half(x)*sin, values and grads."""
    from mltrain.model.transformer import RotaryEmbedding, apply_rope, rotate_half

    rope = RotaryEmbedding(CFG)
    rope.reset_parameters()
    cos, sin_signed = rope(24, offset=5)
    sin = torch.cat((sin_signed[:, CFG.head_dim // 2 :],) * 2, dim=-1)
    x = torch.randn(2, 4, 24, CFG.head_dim, dtype=dtype, requires_grad=True)
    ours = apply_rope(x, cos, sin_signed)
    hf = x * cos.to(dtype) + rotate_half(x) * sin.to(dtype)
    assert torch.equal(ours, hf)
    g = torch.randn_like(ours)
    assert torch.equal(*(torch.autograd.grad(t, x, g)[0] for t in (ours, hf)))


# --------------------------------------------------------------------------- temperature and the rest


def _draw(logits: torch.Tensor, temperature: float, n: int = 2000, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(1234)
    counts = torch.zeros(logits.numel())
    for _ in range(n):
        counts[next_token(logits, temperature, top_k, top_p, g)] += 1
    return counts / n


def _entropy(p: torch.Tensor) -> float:
    p = p[p > 0]
    return float(-(p * p.log()).sum())


def test_temperature_scales_the_distribution() -> None:
    """Sampling draws from softmax(logits / T): a low T sharpens it toward the argmax, a high T flattens it."""
    logits = torch.tensor([1.0, 2.0, 0.0, 1.5])
    freq = {t: _draw(logits, t) for t in (0.25, 1.0, 4.0)}
    for t, f in freq.items():  # the empirical distribution is softmax(logits / T) (2000 draws: +-0.04)
        torch.testing.assert_close(f, torch.softmax(logits / t, dim=-1), atol=0.04, rtol=0)
    assert freq[0.25][1] > 0.85 > freq[1.0][1] > 0.4 > freq[4.0][1]  # argmax share falls as T rises
    assert _entropy(freq[0.25]) < _entropy(freq[1.0]) - 0.5 and _entropy(freq[1.0]) < _entropy(freq[4.0]) - 0.1
    # a tiny temperature is (practically) greedy; temperature 0 is exactly greedy and draws nothing
    assert set(_draw(logits, 1e-3, n=200).nonzero().flatten().tolist()) == {1}
    g = torch.Generator().manual_seed(0)
    before = g.get_state()
    assert next_token(logits, 0.0, 0, 1.0, g) == 1
    assert torch.equal(g.get_state(), before)


def test_top_k_keeps_exactly_k_and_renormalises() -> None:
    logits = torch.tensor([0.0, 3.0, 2.5, -1.0, 2.9])
    f = _draw(logits, 1.0, top_k=3)
    want = torch.softmax(torch.tensor([3.0, 2.5, 2.9]), dim=-1)
    torch.testing.assert_close(f[[1, 2, 4]], want, atol=0.04, rtol=0)
    assert f[0] == 0 and f[3] == 0
    assert (_draw(logits, 1.0, top_k=5) > 0).all() and (_draw(logits, 1.0, top_k=9) > 0).all()  # k >= V: off


def test_check_sampling_refuses_bad_values_in_one_line() -> None:
    from mltrain.errors import ConfigError
    from mltrain.infer.sample import check_sampling

    check_sampling(0.0, 0, 1.0, 1)  # the edges are fine
    check_sampling(0.7, 40, 0.9, 5)
    for args, msg in [
        ((-0.1, 0, 1.0, 1), r"--temperature -0.1: must be >= 0 \(0 = greedy\)"),
        ((1.0, -1, 1.0, 1), r"--top-k -1: must be >= 0 \(0 = off\)"),
        ((1.0, 0, 0.0, 1), r"--top-p 0.0: must be in \(0, 1\]"),
        ((1.0, 0, 1.5, 1), r"--top-p 1.5: must be in \(0, 1\]"),
        ((1.0, 0, 1.0, 0), r"--max-new-tokens 0: must be >= 1"),
    ]:
        with pytest.raises(ConfigError, match=msg):
            check_sampling(*args)


def _run_model(model: Transformer, seq_len: int = 16, eos_id: int = 0):
    """A RunModel around the module's random model (no run dir needed for generate())."""
    from types import SimpleNamespace

    cfg = SimpleNamespace(model=CFG, train=SimpleNamespace(seq_len=seq_len))
    return SimpleNamespace(cfg=cfg, model=model, device=torch.device("cpu"), eos_id=eos_id)


def test_generate_uses_the_temperature(model: Transformer) -> None:
    rm = _run_model(model, eos_id=-1)
    prompt = [3, 7, 11]
    greedy, _ = generate(rm, prompt, 24, temperature=0.0, stop_at_eos=False)
    assert len(greedy) == 24
    cold = [generate(rm, prompt, 24, temperature=1e-4, seed=s, stop_at_eos=False)[0] for s in range(3)]
    assert cold == [greedy] * 3  # near zero is greedy whatever the seed
    hot = [generate(rm, prompt, 24, temperature=2.0, seed=s, stop_at_eos=False)[0] for s in range(3)]
    assert all(h != greedy for h in hot) and len({tuple(h) for h in hot}) == 3

    # the first token over 40 seeds: always the argmax when cold, spread out at T=1
    def first(t: float) -> list[int]:
        return [generate(rm, prompt, 1, temperature=t, seed=s, stop_at_eos=False)[0][0] for s in range(40)]

    assert first(1e-4) == [greedy[0]] * 40
    warm = first(1.0)
    assert warm.count(greedy[0]) < 20 and len(set(warm)) > 5


def test_generate_stops_at_eos_and_at_max_new_tokens(model: Transformer) -> None:
    rm = _run_model(model, eos_id=-1)
    greedy, eos = generate(rm, [3, 7, 11], 10, stop_at_eos=True)
    assert len(greedy) == 10 and eos is False
    rm.eos_id = greedy[4]  # make the 5th greedy token the EOS: generation ends with it
    first = greedy.index(rm.eos_id)
    out, eos = generate(rm, [3, 7, 11], 10)
    assert out == greedy[: first + 1] and eos is True
    out, eos = generate(rm, [3, 7, 11], 10, stop_at_eos=False)
    assert out == greedy and eos is False


@pytest.mark.parametrize(
    "seq_len, prompt, ctx",
    [
        (8, [5, 9, 2, 4, 6], 8),  # the context is train.seq_len ...
        (200, list(range(1, 50)) * 2, 64),  # ... but never more than model.max_seq_len (64); a long prompt is cut
    ],
)
def test_generate_caps_the_context_at_train_seq_len(
    model: Transformer, seq_len: int, prompt: list[int], ctx: int
) -> None:
    """Past the context the cache restarts from the newest half of the tokens: each token after the
    restart is the full forward's greedy pick on exactly that window."""
    rm = _run_model(model, seq_len=seq_len, eos_id=-1)
    out, _ = generate(rm, prompt, 12, stop_at_eos=False)
    want: list[int] = []
    window = list(prompt)[-ctx:]
    with torch.no_grad():
        for _ in range(12):
            tok = int(model(torch.tensor([window]))[0, -1].argmax())
            want.append(tok)
            if len(window) >= ctx:  # the cache is full: it restarts from the newest half, this token included
                window = [*window, tok][-(ctx // 2) :]
            else:
                window = [*window, tok]
    assert out == want
    with pytest.raises(ConfigError):
        generate(rm, prompt, 0)
