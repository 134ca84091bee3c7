"""The FLOPs formula against the published Qwen2.5-0.5B figures and a built model's parameter count."""

import pytest

from mltrain.config import MODEL_PRESETS, ModelConfig
from mltrain.model import flops as F


def test_qwen_matmul_params_and_flops_match_published_figures():
    cfg = ModelConfig(preset="qwen2.5-0.5b")
    n = F.matmul_params(cfg)
    assert n == pytest.approx(494e6, rel=0.002)  # Qwen2.5-0.5B: 494M incl. the tied head
    assert F.flops_per_token(cfg, 2048) == pytest.approx(3.49e9, rel=0.003)


def test_matmul_params_equals_real_param_count_minus_embedding_plus_head():
    from mltrain.model.transformer import Transformer

    for tied in (True, False):
        cfg = ModelConfig(**{**MODEL_PRESETS["tiny"], "tie_embeddings": tied, "qkv_bias": True})
        model = Transformer(cfg)
        real = sum(p.numel() for p in model.parameters())
        emb = cfg.vocab_size * cfg.hidden_size
        # tied: the embedding matrix is the head, counted once as a matmul; untied: the lookup is free
        assert F.matmul_params(cfg) == (real if tied else real - emb)
