"""bench/small_run.py --smoke: both whole runs (mltrain train and the plain GPT loop) start, train, evaluate
and checkpoint as fresh processes, and the result JSON holds what the ratio is computed from (no timing
assertions: those live in bench/). Also the fp32 RMSNorm with its hand-written backward (used on CPU)
against autograd through the reference formula."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from tests.helpers import run_bench_smoke

ROOT = Path(__file__).resolve().parents[2]


def test_small_run_bench_smoke(tmp_path: Path) -> None:
    data = run_bench_smoke("small_run.py", tmp_path / "small.json")
    assert data["benchmark"] == "small_run" and data["mode"] == "smoke"
    rec = data["recipe"]
    assert 0.7e6 < rec["mltrain_params"] < 0.9e6 and abs(rec["plain_gpt_params"] / rec["mltrain_params"] - 1) < 0.02
    assert rec["seq_len"] == 64 and rec["micro_batch"] == 12 and rec["steps"] == 10
    (pair,) = data["pairs"]
    for side in ("mltrain", "plain"):
        run = pair[side]
        assert run["wall_s"] > 0 and run["cpu_s"] > 0
        assert run["final_val_loss"] is not None and math.isfinite(run["final_val_loss"])  # both evaluated
        assert run["final_val_loss"] < math.log(72)  # and both learned something in 10 steps
    assert pair["ratio_wall"] == pair["mltrain"]["wall_s"] / pair["plain"]["wall_s"]
    assert data["median_ratio_wall"] == pair["ratio_wall"]
    assert data["env"]["torch"] == torch.__version__


def test_cpu_rmsnorm_backward_matches_autograd() -> None:
    from mltrain.model.transformer import RMSNorm

    torch.manual_seed(0)
    norm = RMSNorm(64, 1e-6)
    with torch.no_grad():
        norm.weight.copy_(1 + 0.3 * torch.randn(64))
    x = (3 * torch.randn(4, 16, 64, dtype=torch.float32)).requires_grad_()
    y = norm(x)
    assert y.grad_fn is not None and "RMSNormFp32" in type(y.grad_fn).__name__  # the CPU fp32 path ran
    ref = norm.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps))
    assert torch.equal(y, ref)  # the same forward ops: bit-identical
    g = torch.randn_like(y)
    ours = torch.autograd.grad(y, (x, norm.weight), g)
    theirs = torch.autograd.grad(ref, (x, norm.weight), g)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # in fp64 the closed form is exact: a gradient check of the function itself
    x64 = torch.randn(2, 3, 8, dtype=torch.float64, requires_grad=True)
    w64 = torch.randn(8, dtype=torch.float64, requires_grad=True)
    from mltrain.model.transformer import _RMSNormFp32

    assert torch.autograd.gradcheck(lambda a, b: _RMSNormFp32.apply(a, b, 1e-6), (x64, w64))
