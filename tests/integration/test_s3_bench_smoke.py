"""bench/s3_transfer.py --smoke runs end to end (mltrain, plus awscli/s5cmd when installed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses: the bench script and the tools it runs

ROOT = Path(__file__).resolve().parents[2]


def test_s3_transfer_bench_smoke(tmp_path):
    out = tmp_path / "s3.json"
    cpu = str(min(os.sched_getaffinity(0)))  # one CPU this process may use: server and clients pinned to it
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "s3_transfer.py"),
            "--smoke",
            "--out",
            str(out),
            "--server-cpus",
            cpu,
            "--client-cpus",
            cpu,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["benchmark"] == "s3_transfer" and data["mode"] == "smoke"
    m = data["tools"]["mltrain"]
    assert m["upload_mib_s"] > 0 and m["download_mib_s"] > 0 and len(m["upload_s"]) == 1
    assert data["dataset"]["files"] == 5
    assert data["environment"]["server_cpus"] == cpu and data["environment"]["client_cpus"] == cpu
    # the fixed cost of one command, measured on a 1 KiB download, is recorded; at smoke size (or on a
    # busy machine) it may be as long as the whole run, and then no steady rate is claimed
    assert len(m["fixed_download_s"]) == 1 and m["fixed_download_s"][0] > 0
    after = m["download_mib_s_after_fixed"]
    assert after is None or after > m["download_mib_s"]


def _bench_module():
    import importlib.util

    if str(ROOT / "bench") not in sys.path:
        sys.path.insert(0, str(ROOT / "bench"))  # the bench imports its sibling _common

    spec = importlib.util.spec_from_file_location("s3_transfer_bench", ROOT / "bench" / "s3_transfer.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_rate_after_fixed_is_none_when_the_fixed_cost_swamps_the_run():
    b = _bench_module()
    mib = 1 << 20
    assert b.rate_after_fixed(100 * mib, 2.0, 1.0) == 100.0  # 100 MiB in the 1 s left
    assert b.rate_after_fixed(100 * mib, 0.5, 1.8) is None  # the CI case: fixed cost longer than the run
    assert b.rate_after_fixed(100 * mib, 1.0, 0.95) is None  # 5% left is noise, not a rate
    assert b.rate_after_fixed(100 * mib, 1.0, 0.0) is None  # nothing measured
    assert b.ratio_or_none(None, 2.0) is None and b.ratio_or_none(3.0, 2.0) == 1.5


def test_cpu_lists_read_as_taskset_writes_them():
    b = _bench_module()
    assert b.cpu_list("1") == {1} and b.cpu_list("0,2") == {0, 2} and b.cpu_list("1-3,5") == {1, 2, 3, 5}
    assert b.cpu_spec({3, 0, 1}) == "0,1,3" and b.cpu_spec(None) == "any"
    with pytest.raises(ValueError):
        b.cpu_list("one")
