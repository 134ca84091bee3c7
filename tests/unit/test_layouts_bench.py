"""bench/layouts.py: its smoke mode trains through mltrain's Trainer on CPU and writes the result JSON; its
figures (MFU, torchtitan's implied MFU, the fit check) are checked against hand calculations."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
H100_PEAK = 989.4e12


@pytest.fixture
def layouts():
    sys.path.insert(0, str(BENCH))
    try:
        import layouts as mod
    finally:
        sys.path.remove(str(BENCH))
    return mod


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / "layouts.py"), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
    )


def test_smoke_trains_each_one_rank_layout_and_writes_json(tmp_path, tiny_data_dir):
    out = tmp_path / "layouts.json"
    p = run("--smoke", "--data", str(tiny_data_dir), "--out", str(out))
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "only world-size-1 layouts run" in p.stdout and "not the full model's shape" in p.stdout
    data = json.loads(out.read_text())
    assert (data["benchmark"], data["mode"], data["device"]) == ("layouts", "smoke", "cpu")
    assert "only world-size-1 layouts run" in data["note"]
    (model,) = data["models"]
    shape = model["shape"]
    assert shape["preset"] == "tiny" and shape["layers"] == shape["full_layers"] == 4
    assert set(model["variants"]) == {"1rank_eager", "1rank_ac_eager"}
    for name, v in model["variants"].items():
        assert v["world_size"] == 1 and v["activation_checkpointing"] == (name == "1rank_ac_eager"), name
        assert v["compile"] is False and v["bf16"] is False
        # tokens/s is the Trainer's tokens per step over the timed step time: micro batch 2 x seq 64
        assert v["tokens_per_step"] == 2 * 64
        assert v["tokens_per_s_per_gpu"] == pytest.approx(v["tokens_per_step"] / v["step_time_s"])
        assert v["trainer_flops_per_token"] == shape["flops_per_token"]  # the Trainer's own FLOPs formula
        assert v["mfu"] is None and v["peak_mem_gib"] is None  # no GPU peak, no CUDA allocator on CPU
        assert len(v["losses"]) == 2 and v["loss_finite"] and all(5 < x < 10 for x in v["losses"])
        assert v["memory_model_gib"]["total"] > v["memory_model_gib"]["overhead"] > 0
    # the same batches and weights: checkpointing recomputes the forward, the losses are the same
    a, b = model["variants"]["1rank_eager"]["losses"], model["variants"]["1rank_ac_eager"]["losses"]
    assert a == pytest.approx(b, rel=1e-6)
    figures = {r["model"]: r for r in data["torchtitan"]["figures"]}
    assert figures["llama3.1-70b"]["tokens_per_s_per_gpu"] == [829.0]
    assert figures["llama3.1-70b"]["layout"] == "FSDP 32 x TP 8" and figures["llama3.1-70b"]["gpus"] == 256
    assert figures["llama3.1-405b"]["tokens_per_s_per_gpu"] == [100.0, 128.0]
    assert figures["llama3.1-405b"]["layout"] == "FSDP 8 x TP 8 x PP 8" and figures["llama3.1-405b"]["gpus"] == 512
    assert "torchtitan" in data["torchtitan"]["source"]


def test_torchtitan_implied_mfu_by_hand(layouts):
    """70B at seq 8192: N (matmul parameters) = 80 layers x (attention 2 x 8192^2 + 2 x 8192 x 1024, SwiGLU
    3 x 8192 x 28672, two norms) + final norm + the untied 128256 x 8192 head; FLOPs per token = 6N + 12 x 80 x
    64 x 128 x 8192."""
    layer = 2 * 8192**2 + 2 * 8192 * 1024 + 3 * 8192 * 28672 + 2 * 8192
    n = 80 * layer + 8192 + 128256 * 8192
    fpt = 6 * n + 12 * 80 * 64 * 128 * 8192
    rows = {r["model"]: r for r in layouts.torchtitan_rows(H100_PEAK)}
    r70 = rows["llama3.1-70b"]
    assert r70["flops_per_token"] == fpt
    assert r70["mfu_bf16_equivalent"] == [pytest.approx(829 * fpt / H100_PEAK)]
    assert 0.40 < r70["mfu_bf16_equivalent"][0] < 0.41
    lo, hi = rows["llama3.1-405b"]["mfu_bf16_equivalent"]
    assert hi / lo == pytest.approx(128 / 100)


def test_derived_figures(layouts):
    shape = {"flops_per_token": 2e10, "full_flops_per_token": 5e11}
    d = layouts.derived(10_000.0, shape, H100_PEAK)
    assert d["achieved_tflops_per_gpu"] == pytest.approx(200.0)
    assert d["mfu"] == pytest.approx(2e14 / H100_PEAK)
    # the full shape at the same MFU: the same FLOP/s over 25x the FLOPs per token
    assert d["full_shape_tokens_per_s_per_gpu_at_same_mfu"] == pytest.approx(400.0)
    cpu = layouts.derived(10_000.0, shape, None)
    assert cpu["mfu"] is None and cpu["full_shape_tokens_per_s_per_gpu_at_same_mfu"] is None


def test_a_layout_whose_state_exceeds_the_gpu_is_skipped_without_building(layouts, tmp_path, monkeypatch):
    """405B with 1 of 126 layers: 16 B x ~7.4e9 parameters = ~110 GiB of state > 80 GiB."""

    def never(*a, **k):
        raise AssertionError("a layout that cannot fit must not be built")

    monkeypatch.setattr(layouts, "run_variant", never)
    s = layouts.settings(layouts.parse_args(["--preset", "llama3.1-405b", "--layers", "1", "--variants", "1rank_ac"]))
    res = layouts.measure_shape(s, "llama3.1-405b", tmp_path, tmp_path, H100_PEAK, 80.0)
    shape = res["shape"]
    assert shape["layers"] == 1 and shape["full_layers"] == 126
    assert shape["state_gib"] == pytest.approx(16 * shape["params"] / 2**30) and shape["state_gib"] > 100
    (v,) = res["variants"].values()
    assert v["skipped"].startswith("does not fit one GPU") and "tokens_per_s_per_gpu" not in v
    assert v["memory_model_gib"]["total"] > 80


def test_bad_variant_is_one_line(layouts):
    with pytest.raises(SystemExit, match=r"--variants: unknown \['tp2'\]"):
        layouts.settings(layouts.parse_args(["--variants", "tp2"]))


@pytest.mark.skipif(torch.cuda.is_available(), reason="with a GPU, full mode runs the real benchmark")
def test_full_mode_without_cuda_skips(tmp_path):
    p = run("--out", str(tmp_path / "x.json"), env={"CUDA_VISIBLE_DEVICES": ""})
    assert p.returncode == 0 and p.stdout.strip() == "no CUDA device: skipping"
    assert not (tmp_path / "x.json").exists()
