"""bench/overhead.py --smoke: the trainer and the bare loop do the same arithmetic (bit-identical
losses), and the result JSON holds the per-pair ratios (no timing assertions: those live in bench/)."""

from __future__ import annotations

from pathlib import Path

from tests.helpers import run_bench_smoke

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_bench_smoke(tmp_path: Path) -> None:
    data = run_bench_smoke("overhead.py", tmp_path / "overhead.json")
    assert data["benchmark"] == "overhead" and data["mode"] == "smoke"
    assert data["same_losses"] is True
    assert len(data["pairs"]) == 2 and all(p["ratio_cpu"] > 0 and p["model_vs_gpt_cpu"] > 0 for p in data["pairs"])
    assert 0.7e6 < data["recipe"]["params"] < 0.9e6 and data["recipe"]["seq_len"] == 64
