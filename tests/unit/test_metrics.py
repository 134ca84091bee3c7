"""MFU, the device peak lookup and the metrics.jsonl writer/reader."""

import pytest

from mltrain.train import metrics as M


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
