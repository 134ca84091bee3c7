"""Model unit tests: shapes, GQA, param counts, meta init, chunked loss, causality."""

from __future__ import annotations

import pytest
import torch

from mltrain.config import ModelConfig
from mltrain.model import Transformer, flops_per_token, param_count
from mltrain.model.transformer import rope_inv_freq

SMALL = dict(vocab_size=97, hidden_size=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden_size=96, max_seq_len=64)


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**SMALL, **kw})


def build(cfg: ModelConfig, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(cfg)


def test_logits_shape_and_dtype():
    m = build(small())
    x = torch.randint(0, 97, (3, 17))
    out = m(x)
    assert out.shape == (3, 17, 97)
    assert out.dtype == torch.float32
    loss = m(x, x)
    assert loss.shape == () and loss.dtype == torch.float32
    # a freshly initialised model predicts roughly uniformly
    assert abs(loss.item() - torch.log(torch.tensor(97.0)).item()) < 0.5


@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_param_count_matches_module(tie, bias):
    cfg = small(tie_embeddings=tie, qkv_bias=bias)
    m = build(cfg)
    actual = sum(p.numel() for p in m.parameters())
    assert param_count(cfg) == actual
    emb = cfg.vocab_size * cfg.hidden_size
    assert param_count(cfg, include_embedding=False) == actual - emb
    assert (m.output is None) == tie
    assert ("output.weight" in m.state_dict()) == (not tie)
    assert ("layers.0.attention.wq.bias" in m.state_dict()) == bias


def test_tied_vs_untied_differ_by_one_matrix():
    assert param_count(small(tie_embeddings=False)) - param_count(small(tie_embeddings=True)) == 97 * 64


@pytest.mark.parametrize("preset,expected", [("qwen2.5-0.5b", 494_032_768), ("llama3.2-1b", 1_235_814_400)])
def test_presets_match_published_counts(preset, expected):
    cfg = ModelConfig(preset=preset)
    assert param_count(cfg) == expected
    with torch.device("meta"):
        m = Transformer(cfg)
    assert sum(p.numel() for p in m.parameters()) == expected


def test_gqa_shapes():
    cfg = small(n_heads=8, n_kv_heads=2)
    m = build(cfg)
    att = m.layers[0].attention
    assert att.wq.weight.shape == (8 * 8, 64)
    assert att.wk.weight.shape == (2 * 8, 64)
    assert att.wv.weight.shape == (2 * 8, 64)
    assert m(torch.randint(0, 97, (2, 9))).shape == (2, 9, 97)


def test_gqa_equals_mha_with_repeated_kv():
    """GQA with kv heads repeated into a full MHA model gives the same logits."""
    gqa_cfg = small(n_heads=4, n_kv_heads=2)
    mha_cfg = small(n_heads=4, n_kv_heads=4)
    gqa, mha = build(gqa_cfg), build(mha_cfg, seed=1)
    sd = gqa.state_dict()
    hd = gqa_cfg.head_dim
    for k in list(sd):
        if k.endswith(("attention.wk.weight", "attention.wv.weight")):
            w = sd[k].view(2, hd, -1)
            sd[k] = w.repeat_interleave(2, dim=0).reshape(4 * hd, -1)
    mha.load_state_dict(sd)
    x = torch.randint(0, 97, (2, 11))
    torch.testing.assert_close(gqa(x), mha(x), atol=1e-5, rtol=1e-5)


def test_meta_construct_to_empty_init_is_finite_and_deterministic():
    cfg = small(qkv_bias=True, rope_scaling=dict(factor=8.0, original_max_position_embeddings=32))
    outs = []
    for _ in range(2):
        with torch.device("meta"):
            m = Transformer(cfg)
        assert all(p.is_meta for p in m.parameters())
        m.to_empty(device="cpu")
        # poison: anything init_weights forgets would keep this value
        with torch.no_grad():
            for t in list(m.parameters()) + list(m.buffers()):
                t.fill_(float("nan"))
        torch.manual_seed(0)
        m.init_weights()
        for name, t in list(m.named_parameters()) + list(m.named_buffers()):
            assert torch.isfinite(t).all(), name
        assert torch.equal(m.rope.inv_freq, rope_inv_freq(cfg))
        assert torch.equal(m.layers[0].attention_norm.weight, torch.ones(64))
        assert torch.equal(m.layers[0].attention.wq.bias, torch.zeros(64))
        std = m.layers[0].attention.wq.weight.std().item()
        assert 0.015 < std < 0.025
        outs.append(m(torch.arange(10).view(1, 10)))
    assert torch.equal(outs[0], outs[1])


def test_rope_buffer_not_in_state_dict_and_stays_fp32():
    m = build(small())
    assert not any("inv_freq" in k for k in m.state_dict())
    ref = m.rope.inv_freq.clone()
    m.to(torch.bfloat16)
    assert m.rope.inv_freq.dtype == torch.float32
    assert torch.equal(m.rope.inv_freq, ref)
    assert m.layers[0].attention.wq.weight.dtype == torch.bfloat16
    out = m(torch.randint(0, 97, (1, 5)))
    assert out.dtype == torch.bfloat16


@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_chunked_loss_equals_full_loss_and_grads(chunk):
    m = build(small(tie_embeddings=True))
    x = torch.randint(0, 97, (2, 16))
    y = torch.randint(0, 97, (2, 16))
    y[0, :5] = -100  # ignored positions
    full = m(x, y)
    gf = torch.autograd.grad(full, list(m.parameters()))
    chunked = m(x, y, loss_chunk_tokens=chunk)
    gc = torch.autograd.grad(chunked, list(m.parameters()))
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    for a, b in zip(gf, gc, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)


def test_ignore_index_is_ignored():
    m = build(small())
    x = torch.randint(0, 97, (1, 8))
    y = torch.randint(0, 97, (1, 8))
    y2 = y.clone()
    y2[0, 4:] = -100
    logits = m(x)
    expected = torch.nn.functional.cross_entropy(logits[0, :4], y[0, :4])
    torch.testing.assert_close(m(x, y2), expected)
    torch.testing.assert_close(m(x, y2, loss_chunk_tokens=3), expected)


def test_causal_future_tokens_do_not_change_past_logits():
    m = build(small())
    x = torch.randint(0, 97, (1, 12))
    x2 = x.clone()
    x2[0, 7:] = (x2[0, 7:] + 1) % 97
    a, b = m(x), m(x2)
    torch.testing.assert_close(a[:, :7], b[:, :7], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(a[:, 7:], b[:, 7:])


def test_backward_reaches_every_parameter():
    m = build(small(qkv_bias=True, tie_embeddings=False))
    x = torch.randint(0, 97, (2, 8))
    m(x, x).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_flops_per_token_formula():
    cfg = small(tie_embeddings=True)
    n_matmul = param_count(cfg, include_embedding=False) + cfg.vocab_size * cfg.hidden_size
    assert flops_per_token(cfg, 32) == 6 * n_matmul + 12 * 2 * 4 * 16 * 32
