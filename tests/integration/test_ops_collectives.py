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


def _bench(*args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("LOCAL_RANK", "WORLD_SIZE", "RANK")}
    env.update(OMP_NUM_THREADS="1", COLUMNS="200", **(env_extra or {}))
    return subprocess.run(
        mltrain_cmd("bench", "collectives", *args), env=env, capture_output=True, text=True, timeout=180
    )


@pytest.mark.parametrize("nproc", ["0", "1", "-3"])
def test_fewer_than_two_ranks_is_refused_in_one_line(nproc):
    """One rank has no peer: every bandwidth would be 0 (bus factor 2(n-1)/n = 0), a table of zeros."""
    r = _bench("--nproc", nproc, "--device", "cpu", "--max-bytes", "1M", "--iters", "1")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and f"--nproc {nproc}" in lines[0] and "at least 2" in lines[0], r.stderr
    assert "busbw" not in r.stdout and "Traceback" not in r.stderr


def test_no_nproc_on_a_cpu_machine_is_refused_in_one_line():
    import torch

    if torch.cuda.device_count() >= 2:
        pytest.skip("two GPUs here: the default is one rank per GPU")
    r = _bench("--device", "cpu")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "--nproc" in lines[0] and "at least 2" in lines[0], r.stderr


def test_cuda_without_cuda_is_one_line_before_torchrun():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is visible here: the no-CUDA refusal cannot be real")
    r = _bench("--nproc", "2", "--device", "cuda")
    assert r.returncode == 2, r.stdout + r.stderr
    lines = [x for x in (r.stdout + r.stderr).splitlines() if x.strip()]
    assert len(lines) == 1 and "--device cuda" in lines[0] and "no CUDA device" in lines[0], r.stdout + r.stderr
    assert "ChildFailedError" not in r.stderr and "Traceback" not in r.stderr


def test_a_world_of_one_under_torchrun_is_refused(monkeypatch):
    """`torchrun --nproc-per-node 1 -m mltrain bench collectives` (a worker alone) measures nothing either."""
    from mltrain.errors import ConfigError
    from mltrain.ops.collectives import collectives_command

    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ConfigError, match="world of 1 rank.*at least 2"):
        collectives_command(
            nproc=None, ops="all_reduce", max_bytes="1M", iters=1, warmup=0, device="cpu",
            instance_type=None, json_out=True, out=None, console=None,
        )  # fmt: skip
