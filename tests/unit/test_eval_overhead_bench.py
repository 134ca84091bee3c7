"""bench/overhead.py --smoke: the trainer and the bare loop do the same arithmetic (bit-identical
losses), and the result JSON holds the per-pair ratios (no timing assertions: those live in bench/)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_overhead_bench_smoke(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench/overhead.py"), "--smoke", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "overhead" and data["mode"] == "smoke"
    assert data["same_losses"] is True
    assert len(data["pairs"]) == 2 and all(p["ratio_cpu"] > 0 and p["model_vs_gpt_cpu"] > 0 for p in data["pairs"])
    assert 0.7e6 < data["recipe"]["params"] < 0.9e6 and data["recipe"]["seq_len"] == 64
