"""bench/s3_transfer.py --smoke runs end to end (mltrain, plus awscli/s5cmd when installed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # subprocesses: the bench script and the tools it runs

ROOT = Path(__file__).resolve().parents[2]


def test_s3_transfer_bench_smoke(tmp_path):
    out = tmp_path / "s3.json"
    r = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "s3_transfer.py"), "--smoke", "--out", str(out)],
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
    # the fixed cost of one command, measured on a 1 KiB download, is taken out of the steady rate
    assert len(m["fixed_download_s"]) == 1 and 0 < m["fixed_download_s"][0] < m["download_s"][0]
    assert m["download_mib_s_after_fixed"] > m["download_mib_s"]
