"""`mltrain health`: a clean skip without NVML, the median logic with a faked slow GPU, NVML rows.

There is no NVIDIA driver here: the NVML-absent case is real (nvidia-ml-py installed, no library);
the NVML rows run against tests/fake_nvml (a stand-in pynvml, said so in its docstring)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from tests.helpers import mltrain_cmd

from mltrain.ops.health import failed_hosts, judge_burnin

FAKE_NVML = str(Path(__file__).resolve().parents[1] / "fake_nvml")


def _health(*args, env_extra=None, fake_nvml=False):
    env = {k: v for k, v in os.environ.items() if k not in ("MLTRAIN_HEALTH_FAKE_TFLOPS", "FAKE_NVML_BAD")}
    if fake_nvml:
        env["PYTHONPATH"] = FAKE_NVML + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    return subprocess.run(mltrain_cmd("health", *args), env=env, capture_output=True, text=True, timeout=120)


def test_median_logic_flags_only_the_slow_gpu():
    rows = judge_burnin({0: 700.0, 1: 705.0, 2: 698.0, 3: 520.0, 4: 702.0}, tolerance=0.1)
    assert [r.status for r in rows] == ["PASS", "PASS", "PASS", "FAIL", "PASS"]
    assert "gpu3" in rows[3].name and "median 700.0" in rows[3].detail
    assert all(r.status == "PASS" for r in judge_burnin({0: 700.0, 1: 640.0}, tolerance=0.1))  # median 670


def test_no_nvml_is_one_clean_skip_line():
    from mltrain.ops.nvml import NvmlUnavailable, nvml

    try:
        nvml()
        pytest.skip("this machine has a working NVML: the NVML-absent case cannot be real here")
    except NvmlUnavailable:
        pass
    r = _health("--slurm-prolog")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mltrain-health ") and " SKIP " in lines[0]
    assert "Traceback" not in r.stderr


def test_faked_slow_gpu_fails_the_node_and_is_excluded(tmp_path):
    record = tmp_path / "health.jsonl"
    r = _health(
        "--slurm-prolog",
        "--record",
        str(record),
        env_extra={"MLTRAIN_HEALTH_FAKE_TFLOPS": "100,101,99,40", "SLURM_JOB_ID": "42"},
    )
    assert r.returncode == 1
    assert " FAIL gpu3 burn-in" in r.stdout
    rec = json.loads(record.read_text())
    assert rec["status"] == "FAIL" and rec["job_id"] == "42"
    assert failed_hosts(str(record), "42") == [rec["host"]] and failed_hosts(str(record), "7") == []
    r2 = _health("--failed-hosts", str(record), "--job", "42")
    assert r2.stdout.strip() == rec["host"]


def test_nvml_rows_with_fake_driver():
    ok = _health("--json", "--burn-in-s", "0", fake_nvml=True)
    assert ok.returncode == 0, ok.stderr
    doc = json.loads(ok.stdout)
    assert doc["status"] == "PASS" and [c["name"] for c in doc["checks"]] == ["gpu0", "gpu1"]
    bad = _health("--json", "--burn-in-s", "0", fake_nvml=True, env_extra={"FAKE_NVML_BAD": "1"})
    assert bad.returncode == 1
    failing = {c["name"] for c in json.loads(bad.stdout)["checks"] if c["status"] == "FAIL"}
    assert failing == {"gpu1 ecc", "gpu1 throttle"}


def test_fake_fail_host_fails_only_that_node_and_records_the_attempt(tmp_path):
    """The tests-only MLTRAIN_HEALTH_FAKE_FAIL_HOSTS (the Slurm test has no GPU to break): the host is the
    Slurm node name (SLURMD_NODENAME, what ExcNodeList takes), the record carries the job's attempt."""
    record = tmp_path / "health.jsonl"
    fake = {"MLTRAIN_HEALTH_FAKE_FAIL_HOSTS": "n2,n9", "SLURM_JOB_ID": "42"}
    ok = _health(
        "--slurm-prolog", "--burn-in-s", "0", "--record", str(record), env_extra={**fake, "SLURMD_NODENAME": "n1"}
    )
    assert ok.returncode == 0 and ok.stdout.startswith("mltrain-health n1 "), ok.stdout + ok.stderr
    bad = _health(
        "--slurm-prolog",
        "--burn-in-s",
        "0",
        "--record",
        str(record),
        env_extra={**fake, "SLURMD_NODENAME": "n2", "SLURM_RESTART_COUNT": "1"},
    )
    assert bad.returncode == 1 and "mltrain-health n2 FAIL fake failure" in bad.stdout, bad.stdout
    recs = [json.loads(x) for x in record.read_text().splitlines()]
    assert [(r["host"], r["attempt"], r["status"]) for r in recs][1] == ("n2", 1, "FAIL")
    assert recs[0]["host"] == "n1" and recs[0]["attempt"] == 0 and recs[0]["status"] != "FAIL"


def test_failed_hosts_of_this_attempt_only_and_missing_hosts(tmp_path):
    """A node that failed attempt 0 (and was excluded since) does not trip attempt 1; with expected hosts,
    one that wrote no record (its check hung and was killed) counts as failed."""
    record = tmp_path / "health.jsonl"
    recs = [
        {"host": "n1", "job_id": "5", "attempt": 0, "status": "PASS"},
        {"host": "n2", "job_id": "5", "attempt": 0, "status": "FAIL"},
        {"host": "n1", "job_id": "5", "attempt": 1, "status": "WARN"},
        {"host": "n3", "job_id": "5", "attempt": 1, "status": "PASS"},
        {"host": "n3", "job_id": "6", "attempt": 1, "status": "FAIL"},
        {"host": "n4", "job_id": "5", "status": "FAIL"},  # written before records had an attempt: attempt 0
    ]
    record.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert failed_hosts(str(record), "5") == ["n2", "n4"]
    assert failed_hosts(str(record), "5", attempt=0) == ["n2", "n4"]
    assert failed_hosts(str(record), "5", attempt=1) == []
    assert failed_hosts(str(record), "5", attempt=1, expected=["n1", "n3", "n5"]) == ["n5"]
    r = _health("--failed-hosts", str(record), "--job", "5", "--attempt", "1", "--expect-hosts", "n1,n5")
    assert r.returncode == 0 and r.stdout.strip() == "n5"
    r = _health("--failed-hosts", str(record), "--job", "5", "--attempt", "1")
    assert r.returncode == 0 and r.stdout.strip() == ""
