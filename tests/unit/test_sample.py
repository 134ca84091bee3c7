"""KV cache: incremental decoding gives the full forward's logits; sampling controls behave."""

from __future__ import annotations

import pytest
import torch

from mltrain.config import ModelConfig
from mltrain.infer.sample import next_token
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
