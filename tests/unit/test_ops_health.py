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
    from mltrain.telemetry.nvml import NvmlUnavailable, nvml

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


@pytest.mark.parametrize(
    "content, reason",
    [
        (None, "does not exist"),
        ("this is not a health record\n", "line 1: not JSON"),
        ('{"host": "n1", "status": "PASS"}\n[1, 2]\n{"host": "n2", "status": "FAIL"}\n', "line 2: not a JSON object"),
        ('{"host": "n1", "status": "FAIL"}\n{"host": "n2"}\n', "line 2: no 'status'"),
        ('{"status": "FAIL"}\n', "line 1: no 'host'"),
        ('{"host": "n1", "status": "BROKEN"}\n', "line 1: status 'BROKEN'"),
        ('{"host": "n1", "status": "FAIL"}\nhost=n2 status=FAIL\n', "line 2: not JSON"),
        ("", "no complete health record"),
        ('{"host": "n1", "sta', "no complete health record"),
        ("{not json at all}\n", "no complete health record"),
    ],
)
def test_failed_hosts_of_an_unreadable_record_is_an_error_not_an_empty_list(tmp_path, content, reason):
    """An empty answer means "no node failed" to the batch script: a file that cannot be read must not say so."""
    from mltrain.errors import ConfigError

    record = tmp_path / "health.jsonl"
    if content is not None:
        record.write_text(content)
    with pytest.raises(ConfigError) as e:
        failed_hosts(str(record))
    assert str(record) in str(e.value) and reason in str(e.value)
    r = _health("--failed-hosts", str(record))
    assert r.returncode == 2 and r.stdout == "", r.stdout + r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and str(record) in lines[0] and "Traceback" not in r.stderr


def test_failed_hosts_of_a_directory_is_one_line(tmp_path):
    r = _health("--failed-hosts", str(tmp_path))
    assert r.returncode == 2 and str(tmp_path) in r.stderr and "Traceback" not in r.stderr


def test_failed_hosts_skips_only_a_torn_record(tmp_path):
    """A check killed mid-write leaves a partial record: that host has no record (and counts as failed when
    expected), the rest of the file still counts, also when a later attempt appended after it."""
    record = tmp_path / "health.jsonl"
    record.write_text('{"host": "n1", "status": "FAIL"}\n{"host": "n2", "status": "PA')
    assert failed_hosts(str(record)) == ["n1"]
    assert failed_hosts(str(record), expected=["n1", "n2"]) == ["n1", "n2"]
    with record.open("a") as f:
        f.write('\n{"host": "n3", "status": "FAIL", "attempt": 1}\n')
    assert failed_hosts(str(record), attempt=1) == ["n3"]
    assert failed_hosts(str(record), attempt=0, expected=["n1", "n2"]) == ["n1", "n2"]


# --------------------------------------------------------------------------- every FAIL/WARN rule, at its edge

from mltrain.ops.health import CRITICAL_XIDS, HOT_C, gpu_checks, xid_checks  # noqa: E402
from mltrain.telemetry.nvml import GpuReading  # noqa: E402


def _reading(**kw) -> GpuReading:
    base = {"index": 3, "name": "NVIDIA H100 80GB HBM3", "uuid": "GPU-x", "temperature_c": 40.0,
            "slowdown_temp_c": 90.0, "ecc_uncorrected": 0, "ecc_corrected": 0}  # fmt: skip
    return GpuReading(**{**base, **kw})


def _rows(r: GpuReading) -> dict[str, str]:
    return {c.name: c.status for c in gpu_checks(r)}


@pytest.mark.parametrize(
    "kw, expect",
    [
        ({}, {"gpu3": "PASS"}),
        ({"ecc_uncorrected": 1}, {"gpu3 ecc": "FAIL"}),
        ({"ecc_uncorrected": None}, {"gpu3": "PASS"}),
        ({"retired_pending": True}, {"gpu3 retired pages": "FAIL"}),
        ({"retired_pending": False, "retired_pages": 4}, {"gpu3": "PASS"}),
        ({"remap_failure": True}, {"gpu3 row remap": "FAIL"}),
        ({"remap_failure": True, "remap_pending": True}, {"gpu3 row remap": "FAIL"}),
        ({"remap_pending": True}, {"gpu3 row remap": "WARN"}),
        ({"throttle": ["hw_slowdown"]}, {"gpu3 throttle": "FAIL"}),
        ({"throttle": ["hw_thermal_slowdown"]}, {"gpu3 throttle": "FAIL"}),
        ({"throttle": ["hw_power_brake_slowdown", "sw_power_cap"]}, {"gpu3 throttle": "FAIL"}),
        ({"throttle": ["sw_thermal_slowdown"]}, {"gpu3 throttle": "WARN"}),
        ({"throttle": ["sw_power_cap"]}, {"gpu3 throttle": "WARN"}),
        ({"throttle": ["gpu_idle", "applications_clocks_setting"]}, {"gpu3": "PASS"}),
        # temperature: WARN from 5 C below the GPU's own slowdown threshold
        ({"temperature_c": 85.0}, {"gpu3 temperature": "WARN"}),
        ({"temperature_c": 84.9}, {"gpu3": "PASS"}),
        ({"temperature_c": 70.0, "slowdown_temp_c": 75.0}, {"gpu3 temperature": "WARN"}),
        ({"temperature_c": 69.0, "slowdown_temp_c": 75.0}, {"gpu3": "PASS"}),
        # no threshold from the driver: HOT_C
        ({"temperature_c": HOT_C, "slowdown_temp_c": None}, {"gpu3 temperature": "WARN"}),
        ({"temperature_c": HOT_C - 0.5, "slowdown_temp_c": None}, {"gpu3": "PASS"}),
        ({"temperature_c": None}, {"gpu3": "PASS"}),
    ],
)
def test_gpu_rule_and_its_edge(kw, expect):
    assert _rows(_reading(**kw)) == expect


def test_fail_rows_name_the_fault_and_the_remedy():
    rows = gpu_checks(_reading(ecc_uncorrected=3, retired_pending=True, remap_failure=True, throttle=["hw_slowdown"]))
    by = {c.name: c for c in rows}
    assert by["gpu3 ecc"].detail == "3 uncorrected ECC errors"
    assert by["gpu3 retired pages"].detail == "page retirement pending" and "drain" in by["gpu3 retired pages"].remedy
    assert by["gpu3 row remap"].detail == "row remapping failed" and "RMA" in by["gpu3 row remap"].remedy
    assert by["gpu3 throttle"].detail == "hardware throttling: hw_slowdown"
    assert all(c.status == "FAIL" for c in rows) and len(rows) == 4
    ok = gpu_checks(_reading(sm_clock_mhz=1980, sm_clock_max_mhz=1980, ecc_corrected=2))
    assert ok[0].detail == "NVIDIA H100 80GB HBM3, 40 C, SM 1980/1980 MHz, ecc corrected 2"


def test_every_critical_xid_fails_and_the_others_warn():
    catalogue = {48, 61, 62, 63, 64, 69, 74, 79, 92, 94, 95, 119, 120, 140}  # NVIDIA's XID catalogue
    assert catalogue == CRITICAL_XIDS
    for xid in CRITICAL_XIDS:
        (row,) = xid_checks([(2, xid)], [])
        assert (row.name, row.status, row.detail) == (f"xid {xid}", "FAIL", f"XID {xid} on gpu2")
    for xid in (13, 31, 43, 45, 47, 60, 65, 68, 80, 93, 121, 139, 141):
        assert [r.status for r in xid_checks([], [("0000:53:00", xid)])] == ["WARN"]
    assert xid_checks([], [("0000:53:00", 79)])[0].detail == "XID 79 on PCI 0000:53:00"
    assert xid_checks([], []) == []


def test_burn_in_edge_is_strictly_below_median_times_one_minus_tolerance():
    # median of {100, 100, 90} is 100: 90 is exactly 10% below and passes; 89.99 fails
    assert [r.status for r in judge_burnin({0: 100.0, 1: 100.0, 2: 90.0}, 0.1)] == ["PASS", "PASS", "PASS"]
    rows = judge_burnin({0: 100.0, 1: 100.0, 2: 89.99}, 0.1)
    assert [r.status for r in rows] == ["PASS", "PASS", "FAIL"]
    assert rows[2].detail == "90.0 TFLOP/s (node median 100.0): 10% slower than the median"
    rows = judge_burnin({0: 100.0, 1: 100.0, 2: 70.0, 3: 100.0}, 0.25)
    assert [r.status for r in rows] == ["PASS", "PASS", "FAIL", "PASS"] and "30% slower" in rows[2].detail
    assert [r.status for r in judge_burnin({}, 0.1)] == ["SKIP"]


@pytest.mark.parametrize(
    "fault, row, status, rc",
    [
        ("retired_pending@1", "gpu1 retired pages", "FAIL", 1),
        ("remap_failure@0", "gpu0 row remap", "FAIL", 1),
        ("xid79@1", "xid 79", "FAIL", 1),
        ("remap_pending@0", "gpu0 row remap", "WARN", 0),
        ("xid13@0", "xid 13", "WARN", 0),
    ],
)
def test_nvml_fault_fails_the_node_and_excludes_it(tmp_path, fault, row, status, rc):
    """Through the real NVML reader (fake driver): a FAIL row makes the node FAIL (exit 1, what a prolog drains
    on) and `--failed-hosts` names it for the next attempt's exclusion; a WARN row does neither."""
    record = tmp_path / "health.jsonl"
    env = {"FAKE_NVML_FAULT": fault, "SLURMD_NODENAME": "p5-7", "SLURM_JOB_ID": "9"}
    r = _health("--json", "--burn-in-s", "0", "--record", str(record), fake_nvml=True, env_extra=env)
    assert r.returncode == rc, r.stdout + r.stderr
    doc = json.loads(r.stdout)
    assert {c["name"]: c["status"] for c in doc["checks"]}[row] == status and doc["status"] == status
    assert failed_hosts(str(record), "9") == (["p5-7"] if status == "FAIL" else [])


def test_nvml_reading_that_crashes_is_a_fail_not_a_traceback(tmp_path):
    r = _health("--slurm-prolog", "--burn-in-s", "0", fake_nvml=True,
                env_extra={"FAKE_NVML_FAULT": "crash@1", "SLURMD_NODENAME": "p5-7"})  # fmt: skip
    assert r.returncode == 1, r.stdout + r.stderr
    assert r.stdout.startswith("mltrain-health p5-7 FAIL nvml: ") and "GPU is lost" in r.stdout
    assert "Traceback" not in r.stderr


def test_burn_in_thread_that_crashes_fails_its_gpu(monkeypatch):
    """A GPU whose burn-in raises (CUDA error, out of memory) must not drop out of the median silently: its
    thread's exception is a FAIL row. Here torch has no CUDA, so every `cuda` tensor raises, as a lost GPU does."""
    import torch

    from mltrain.ops.health import burn_in_checks

    if torch.cuda.is_available():
        pytest.skip("CUDA is visible: the burn-in would really run")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    rows = burn_in_checks(0.01, 0.1)
    assert [(r.name, r.status) for r in rows] == [("gpu0 burn-in", "FAIL"), ("gpu1 burn-in", "FAIL")]
    assert "crashed" in rows[0].detail


def test_the_newest_record_of_a_host_decides(tmp_path):
    """A node checked twice in one attempt (a re-run after a reset): the later record counts, either way."""
    record = tmp_path / "health.jsonl"
    record.write_text(
        '{"host": "n1", "status": "FAIL"}\n{"host": "n2", "status": "PASS"}\n'
        '{"host": "n1", "status": "PASS"}\n{"host": "n2", "status": "FAIL"}\n'
    )
    assert failed_hosts(str(record)) == ["n2"]


def test_expected_hosts_without_any_record_all_fail(tmp_path):
    """Every node's check hung and was killed before writing: no file, or nothing complete in it. The batch
    script passes --expect-hosts then, and every expected host counts as failed (not "could not read")."""
    record = tmp_path / "health.jsonl"
    assert failed_hosts(str(record), "9", 0, expected=["n1", "n2"]) == ["n1", "n2"]
    r = _health("--failed-hosts", str(record), "--job", "9", "--attempt", "0", "--expect-hosts", "n1,n2")
    assert r.returncode == 0 and r.stdout.strip() == "n1,n2", r.stdout + r.stderr
    record.write_text('{"host": "n1", "sta')
    assert failed_hosts(str(record), expected=["n1", "n2"]) == ["n1", "n2"]
    record.write_text("not a record file\n")
    with pytest.raises(Exception, match="line 1: not JSON"):
        failed_hosts(str(record), expected=["n1"])
