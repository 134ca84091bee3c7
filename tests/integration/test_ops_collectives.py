"""`mltrain bench collectives` on 2 gloo processes under real torchrun; nccl-tests' busbw by hand."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from tests.helpers import mltrain_cmd

from mltrain.ops.collectives import Result, bandwidths, message_sizes, parse_size, verdict


def test_busbw_matches_hand_computation():
    # 8 ranks, 1 GiB all-reduce in 10 ms: algbw = 2^30 / 0.01 / 1e9 = 107.374 GB/s; busbw = algbw * 2*7/8.
    alg, bus = bandwidths("all_reduce", 1 << 30, 0.01, 8)
    assert alg == pytest.approx(107.3741824)
    assert bus == pytest.approx(107.3741824 * 1.75)
    alg, bus = bandwidths("all_gather", 1 << 30, 0.01, 8)
    assert bus == pytest.approx(107.3741824 * 0.875)
    assert bandwidths("reduce_scatter", 1 << 20, 1.0, 2)[1] == pytest.approx((1 << 20) / 1e9 * 0.5)
    assert message_sizes(parse_size("8M")) == [1 << 20, 2 << 20, 4 << 20, 8 << 20]
    assert parse_size("4G") == 4 << 30


def test_verdict_against_shipped_reference():
    good = [Result("all_reduce", 1 << 30, 1.0, 300.0, 470.0)]
    bad = [Result("all_reduce", 1 << 30, 1.0, 100.0, 150.0)]
    assert verdict(good, "p5.48xlarge", 8, 1)["status"] == "PASS"
    v = verdict(bad, "p5.48xlarge", 8, 1)
    assert v["status"] == "WARN" and "480" in v["per_op"]["all_reduce"]["reason"]
    assert verdict(good, "p5.48xlarge", 16, 2)["status"] == "SKIP"  # no multi-node reference
    assert verdict(good, None, 2, 1)["status"] == "SKIP"


@pytest.mark.slow
def test_bench_collectives_two_gloo_ranks(tmp_path):
    out = tmp_path / "coll.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run(
        mltrain_cmd(
            "bench", "collectives", "--nproc", "2", "--max-bytes", "2M", "--iters", "2", "--out", str(out), "--json"
        ),
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert doc["world_size"] == 2 and doc["backend"] == "gloo"
    assert [(x["op"], x["size_bytes"]) for x in doc["results"]] == [
        (op, s) for op in ("all_reduce", "all_gather", "reduce_scatter") for s in (1 << 20, 2 << 20)
    ]
    for x in doc["results"]:
        t = x["time_us"] / 1e6
        algbw = x["size_bytes"] / t / 1e9  # by hand, nccl-tests' definitions
        factor = 2 * (2 - 1) / 2 if x["op"] == "all_reduce" else (2 - 1) / 2
        assert x["algbw_gbps"] == pytest.approx(algbw, rel=1e-9)
        assert x["busbw_gbps"] == pytest.approx(algbw * factor, rel=1e-9)
    assert doc["verdict"]["status"] == "SKIP"  # CPU: no reference
    assert json.loads(r.stdout[r.stdout.index("{") :]) == doc  # --json printed by rank 0 only, once
