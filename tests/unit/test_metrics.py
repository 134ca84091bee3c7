"""The FLOPs formula against the published Qwen2.5-0.5B figures, and MFU."""

import pytest

from mltrain.config import MODEL_PRESETS, ModelConfig
from mltrain.train import metrics as M


def test_qwen_matmul_params_and_flops_match_issue_figures():
    cfg = ModelConfig(preset="qwen2.5-0.5b")
    n = M.matmul_params(cfg)
    assert n == pytest.approx(494e6, rel=0.002)  # Qwen2.5-0.5B: 494M incl. the tied head
    assert M.flops_per_token(cfg, 2048) == pytest.approx(3.49e9, rel=0.003)


def test_matmul_params_equals_real_param_count_minus_embedding_plus_head():
    from mltrain.model.transformer import Transformer

    for tied in (True, False):
        cfg = ModelConfig(**{**MODEL_PRESETS["tiny"], "tie_embeddings": tied, "qkv_bias": True})
        model = Transformer(cfg)
        real = sum(p.numel() for p in model.parameters())
        emb = cfg.vocab_size * cfg.hidden_size
        # tied: the embedding matrix is the head, counted once as a matmul; untied: the lookup is free
        assert M.matmul_params(cfg) == (real if tied else real - emb)


def test_mfu_and_peak_lookup():
    assert M.device_peak_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert M.device_peak_flops("NVIDIA H200") == 989.4e12
    assert M.device_peak_flops("cpu") is None
    assert M.mfu(100e3, 3.49e9, 989.4e12, 1) == pytest.approx(0.3527, rel=1e-3)
    assert M.mfu(1.0, 1.0, None, 1) is None


def test_metrics_reader_ignores_torn_last_line(tmp_path):
    w = M.MetricsWriter(tmp_path, tensorboard=False)
    w.write({"kind": "train", "step": 1, "loss": 2.0})
    w.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "train", "st')
    recs = M.read_metrics(tmp_path)
    assert [r["step"] for r in recs] == [1]
