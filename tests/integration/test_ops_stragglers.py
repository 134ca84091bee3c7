"""Straggler detection on 2 gloo processes under real torchrun: rank 1 is made slow
(MLTRAIN_SLOW_RANK, a test hook that sleeps inside its forward) and is logged with host and GPU.
Prometheus is on too: its rank-0-only start-up once called a collective and hung both ranks."""

from __future__ import annotations

import os
import subprocess

import pytest
from tests.helpers import mltrain_cmd, tiny_run_config, write_config

from mltrain.train.metrics import read_metrics

pytestmark = pytest.mark.slow


def test_slow_rank_is_logged_as_straggler(tmp_path, tiny_data_dir):
    cfg = tiny_run_config(tmp_path, tiny_data_dir, "strag", parallel="ddp", max_steps=6)
    cfg["log"] = {
        "stragglers": {"every_steps": 2, "threshold": 0.2},
        # with 2 ranks, only rank 0 serves metrics: nothing it does at start-up may be a collective
        "prometheus": {"enabled": True, "port": 0, "addr": "127.0.0.1"},
    }
    path = write_config(tmp_path / "strag.yaml", cfg)
    env = {**os.environ, "MLTRAIN_SLOW_RANK": "1:0.1"}
    r = subprocess.run(
        mltrain_cmd("train", str(path), "--nproc", "2"), env=env, capture_output=True, text=True, timeout=90
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    recs = [x for x in read_metrics(tmp_path / "runs" / "strag") if x["kind"] == "straggler"]
    assert [x["step"] for x in recs] == [2, 4]  # the window ending at the last step has no next forward
    for x in recs:
        assert x["rank"] == 1 and x["gpu"] == "cpu" and x["host"] and x["local_rank"] == 1
        assert x["rank_time_s"] > x["median_s"] * 1.2 and x["slowdown"] > 0.2
    assert "straggler at step 2: rank 1" in r.stdout
    train = [x for x in read_metrics(tmp_path / "runs" / "strag") if x["kind"] == "train"]
    assert all(x["data_wait_s"] >= 0 for x in train)  # the instrumented loader's field
    ckpts = [x for x in read_metrics(tmp_path / "runs" / "strag") if x["kind"] == "checkpoint"]
    assert [c["step"] for c in ckpts] == [3, 6] and all(c["ok"] and c["save_s"] > 0 for c in ckpts)
    # `mltrain status` shows them (the line and the --json field come from the same RunStatus)
    from mltrain.launch.status import run_status, status_json, straggler_line

    st = run_status(tmp_path / "runs" / "strag")
    line = straggler_line(st)
    assert line is not None and line.startswith("stragglers: 2 (last at step 4: rank 1 on "), line
    assert line.endswith("x the median)") and status_json(st)["stragglers"]["last"]["step"] == 4
