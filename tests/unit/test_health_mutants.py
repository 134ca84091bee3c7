"""`mltrain health` in-process: each NVML row and its threshold, XIDs, the burn-in verdict, the record,
the prolog line and the exit code. test_ops_health.py runs the command in a subprocess (the real entry
point); these call the functions, so mutation testing can see them. NVML rows use tests/fake_nvml (a
stand-in pynvml: there is no NVIDIA driver here) or GpuReading values built by hand."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from mltrain.errors import ConfigError
from mltrain.ops import health as H
from mltrain.ops.checks import FAIL, PASS, SKIP, WARN, Check
from mltrain.telemetry.nvml import GpuReading

FAKE_NVML = str(Path(__file__).resolve().parents[1] / "fake_nvml")


def reading(**over) -> GpuReading:
    base = dict(index=1, name="H100", uuid="GPU-1", temperature_c=40.0, slowdown_temp_c=90.0)
    return GpuReading(**{**base, **over})


def rows(**over) -> list[tuple[str, str, str, str]]:
    return [(c.name, c.status, c.detail, c.remedy) for c in H.gpu_checks(reading(**over))]


def test_healthy_gpu_is_one_pass_row_with_what_was_read() -> None:
    assert rows(sm_clock_mhz=1980, sm_clock_max_mhz=1980, ecc_corrected=2) == [
        ("gpu1", PASS, "H100, 40 C, SM 1980/1980 MHz, ecc corrected 2", "")
    ]
    assert rows(temperature_c=None, ecc_corrected=None) == [("gpu1", PASS, "H100, temp n/a, ecc n/a", "")]
    assert rows(ecc_uncorrected=0, retired_pending=False, remap_failure=False, remap_pending=False)[0][1] == PASS


def test_each_nvml_problem_row() -> None:
    assert rows(ecc_uncorrected=3) == [("gpu1 ecc", FAIL, "3 uncorrected ECC errors", "drain; reset the GPU")]
    assert rows(retired_pending=True) == [
        ("gpu1 retired pages", FAIL, "page retirement pending", "drain and reboot the node")
    ]
    assert rows(remap_failure=True, remap_pending=True) == [
        ("gpu1 row remap", FAIL, "row remapping failed", "drain; the GPU needs replacing (RMA)")
    ]
    assert rows(remap_pending=True) == [
        ("gpu1 row remap", WARN, "row remap pending", "reset the GPU when the node is idle")
    ]
    assert rows(throttle=["sw_power_cap", "hw_thermal_slowdown", "hw_slowdown"]) == [
        ("gpu1 throttle", FAIL, "hardware throttling: hw_slowdown, hw_thermal_slowdown", "check cooling and power")
    ]
    assert rows(throttle=["hw_power_brake_slowdown"])[0][:2] == ("gpu1 throttle", FAIL)
    assert rows(throttle=["sw_thermal_slowdown", "gpu_idle"]) == [
        ("gpu1 throttle", WARN, "throttled: sw_thermal_slowdown, gpu_idle", "check cooling/power cap")
    ]
    assert rows(throttle=["sw_power_cap"])[0][:2] == ("gpu1 throttle", WARN)
    assert rows(throttle=["gpu_idle", "applications_clocks_setting"])[0][:2] == ("gpu1", PASS)
    both = rows(ecc_uncorrected=1, retired_pending=True)
    assert [r[0] for r in both] == ["gpu1 ecc", "gpu1 retired pages"]  # every problem, no PASS row


def test_temperature_warns_five_degrees_below_slowdown_or_at_85() -> None:
    assert rows(temperature_c=84.9)[0][:2] == ("gpu1", PASS)
    assert rows(temperature_c=85.0) == [("gpu1 temperature", WARN, "85 C (slowdown near)", "check cooling")]
    assert rows(temperature_c=84.0, slowdown_temp_c=None)[0][1] == PASS
    assert rows(temperature_c=85.0, slowdown_temp_c=None)[0][:2] == ("gpu1 temperature", WARN)
    assert rows(temperature_c=80.0, slowdown_temp_c=85.0)[0][:2] == ("gpu1 temperature", WARN)
    assert rows(temperature_c=79.0, slowdown_temp_c=85.0)[0][1] == PASS
    # a WARN row alone: no PASS summary row next to it
    assert [r[0] for r in rows(temperature_c=95.0)] == ["gpu1 temperature"]


def test_xid_rows_critical_fail_others_warn() -> None:
    got = H.xid_checks([(0, 79), (2, 13)], [("0000:3b:00.0", 48), ("0000:3c:00.0", 31)])
    assert [(c.name, c.status, c.detail, c.remedy) for c in got] == [
        ("xid 79", FAIL, "XID 79 on gpu0", "drain; see NVIDIA's XID catalogue"),
        ("xid 13", WARN, "XID 13 on gpu2", "drain; see NVIDIA's XID catalogue"),
        ("xid 48", FAIL, "XID 48 on PCI 0000:3b:00.0", "drain; see NVIDIA's XID catalogue"),
        ("xid 31", WARN, "XID 31 on PCI 0000:3c:00.0", "drain; see NVIDIA's XID catalogue"),
    ]
    assert H.xid_checks([], []) == []
    assert all(c.status == FAIL for c in H.xid_checks([(0, x) for x in H.CRITICAL_XIDS], []))


def test_kernel_xids_parses_the_kernel_log(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    log = (
        "[1.0] NVRM: Xid (PCI:0000:3b:00): 79, pid=1, GPU has fallen off the bus.\n"
        "[2.0] something else\n"
        "[3.0] NVRM: Xid (PCI:0000:86:00): 13, pid=2, Graphics Exception\n"
    )
    seen: list = []

    def fake_run(cmd, **kw):
        seen.append((cmd, kw))
        return subprocess.CompletedProcess(cmd, 0, log, "")

    monkeypatch.setattr(H.subprocess, "run", fake_run)
    assert H.kernel_xids() == [("0000:3b:00", 79), ("0000:86:00", 13)]
    assert seen[0][0] == ["dmesg"] and seen[0][1]["capture_output"] and seen[0][1]["text"]

    def unreadable(cmd, **kw):
        raise OSError("dmesg: read kernel buffer failed: Operation not permitted")

    monkeypatch.setattr(H.subprocess, "run", unreadable)
    assert H.kernel_xids() == []


def test_burnin_median_and_tolerance_edges() -> None:
    assert [(c.name, c.status, c.detail) for c in H.judge_burnin({})] == [("burn-in", SKIP, "no GPU to burn in")]
    got = H.judge_burnin({1: 100.0, 0: 100.0, 2: 89.0})
    assert [(c.name, c.status) for c in got] == [("gpu0 burn-in", PASS), ("gpu1 burn-in", PASS), ("gpu2 burn-in", FAIL)]
    assert got[0].detail == "100.0 TFLOP/s (node median 100.0)" and got[0].remedy == ""
    assert got[2].detail == "89.0 TFLOP/s (node median 100.0): 11% slower than the median"
    assert got[2].remedy == "drain; check clocks, cooling, power and PCIe/NVLink"
    assert H.judge_burnin({0: 100.0, 1: 100.0, 2: 90.0})[2].status == PASS  # exactly 10% below: fine
    assert H.judge_burnin({0: 100.0, 1: 100.0, 2: 90.0}, tolerance=0.05)[2].status == FAIL
    assert H.judge_burnin({0: 100.0, 1: 100.0, 2: 89.0}, tolerance=0.2)[2].status == PASS
    assert H.DEFAULT_TOLERANCE == 0.10


def test_fake_tflops_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(H.FAKE_TFLOPS_ENV, raising=False)
    assert H._fake_tflops() is None
    monkeypatch.setenv(H.FAKE_TFLOPS_ENV, "")
    assert H._fake_tflops() is None
    monkeypatch.setenv(H.FAKE_TFLOPS_ENV, "100,101.5,40")
    assert H._fake_tflops() == {0: 100.0, 1: 101.5, 2: 40.0}


@pytest.fixture()
def no_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    """No NVML, whatever this machine has: the import of pynvml fails."""
    monkeypatch.setitem(sys.modules, "pynvml", None)
    for var in (H.FAKE_TFLOPS_ENV, H.FAKE_FAIL_HOSTS_ENV, "SLURM_JOB_ID", "SLURM_RESTART_COUNT", "FAKE_NVML_BAD"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("SLURMD_NODENAME", "n1")


@pytest.fixture()
def fake_nvml(no_nvml, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.syspath_prepend(FAKE_NVML)
    monkeypatch.delitem(sys.modules, "pynvml")
    fake = importlib.import_module("pynvml")
    assert fake.__file__.startswith(FAKE_NVML)
    monkeypatch.setattr(H, "kernel_xids", lambda: [])
    yield fake
    sys.modules.pop("pynvml", None)


def test_run_health_without_nvml_is_a_skip(no_nvml) -> None:
    got, skipped = H.run_health(0, 0.1)
    assert skipped is not None and skipped.startswith("nvidia-ml-py is not installed")
    assert [(c.name, c.status, c.detail, c.remedy) for c in got] == [
        ("nvml", SKIP, skipped, "no GPU health checks on this node")
    ]


def test_run_health_without_nvml_judges_a_faked_burn_in(no_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(H.FAKE_TFLOPS_ENV, "100,100,50")
    got, skipped = H.run_health(0, 0.1)
    assert skipped is None and [c.status for c in got] == [PASS, PASS, FAIL]
    got, _ = H.run_health(0, 0.6)  # the tolerance is passed on
    assert [c.status for c in got] == [PASS, PASS, PASS]


def test_run_health_with_nvml_reads_every_gpu(fake_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    got, skipped = H.run_health(0, 0.1)
    assert skipped is None and [c.name for c in got] == ["gpu0", "gpu1"]
    monkeypatch.setattr(H, "kernel_xids", lambda: [("0000:3b:00", 79)])
    monkeypatch.setenv("FAKE_NVML_BAD", "1")
    got, _ = H.run_health(0, 0.1)
    assert [(c.name, c.status) for c in got] == [
        ("gpu0", PASS),
        ("gpu1 ecc", FAIL),
        ("gpu1 throttle", FAIL),
        ("gpu1 temperature", WARN),
        ("xid 79", FAIL),
    ]


def test_run_health_burn_in_without_cuda_is_a_skip_row(fake_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    got, _ = H.run_health(0.5, 0.1)
    assert (got[-1].name, got[-1].status, got[-1].detail, got[-1].remedy) == (
        "burn-in",
        SKIP,
        "torch sees no CUDA device",
        "install a CUDA torch build",
    )
    got, _ = H.run_health(0, 0.1)  # no burn-in asked
    assert [c.name for c in got] == ["gpu0", "gpu1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(H, "burn_in", lambda s: ({0: 100.0, 1: 50.0}, {}) if s == 0.5 else ({}, {}))
    got, _ = H.run_health(0.5, 0.1)
    assert [(c.name, c.status) for c in got][-2:] == [("gpu0 burn-in", PASS), ("gpu1 burn-in", FAIL)]


def test_this_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMD_NODENAME", "gpu-node-7")
    assert H.this_host() == "gpu-node-7"
    monkeypatch.delenv("SLURMD_NODENAME")
    monkeypatch.setattr(H.socket, "gethostname", lambda: "node3.cluster.example")
    assert H.this_host() == "node3"
    monkeypatch.setenv("SLURMD_NODENAME", "")
    assert H.this_host() == "node3"


def test_fake_failure_names_only_listed_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(H.FAKE_FAIL_HOSTS_ENV, raising=False)
    assert H._fake_failure("n1") is None
    monkeypatch.setenv(H.FAKE_FAIL_HOSTS_ENV, " n2 , ,n9")
    assert H._fake_failure("n1") is None and H._fake_failure("") is None
    assert H._fake_failure("n2") == Check(
        "fake failure", FAIL, f"{H.FAKE_FAIL_HOSTS_ENV} names n2 (tests only)", "unset it"
    )
    assert H._fake_failure("n9") is not None


def test_failed_hosts_newest_record_wins_and_job_filter(tmp_path: Path) -> None:
    record = tmp_path / "h.jsonl"
    recs = [
        {"host": "n1", "job_id": 5, "status": "FAIL"},
        {"host": "n1", "job_id": "5", "status": "PASS"},  # the newest of n1: passed
        {"host": "n2", "job_id": "5", "status": "WARN"},
        {"host": "n3", "job_id": "6", "status": "FAIL"},
    ]
    record.write_text("".join(json.dumps(r) + "\n" for r in recs))
    assert H.failed_hosts(str(record), "5") == []
    assert H.failed_hosts(str(record)) == ["n3"]  # no job: every record
    assert H.failed_hosts(str(record), 6) == ["n3"]
    assert H.failed_hosts(str(record), "5", expected=["n2", "n4", "n0"]) == ["n0", "n4"]
    with pytest.raises(ConfigError, match="does not exist"):  # a missing record file is refused, not "no failures"
        H.failed_hosts(str(tmp_path / "none.jsonl"), "5")
    assert H.failed_hosts(str(tmp_path / "none.jsonl"), "5", expected=["n2", "n1"]) == ["n1", "n2"]


def _command(capsys, **over) -> tuple[int, str]:
    kw = dict(burn_in_s=0, tolerance=0.1, json_out=False, slurm_prolog=True, record=None, drain=False, console=None)
    code = H.health_command(**{**kw, **over})
    return code, capsys.readouterr().out


def test_command_skip_line_and_exit_zero(no_nvml, capsys) -> None:
    code, out = _command(capsys)
    assert code == 0 and out.startswith("mltrain-health n1 SKIP nvidia-ml-py is not installed") and out.count("\n") == 1
    code, out = _command(capsys, slurm_prolog=False)  # a skip is one line even without --slurm-prolog
    assert code == 0 and out.startswith("mltrain-health n1 SKIP ")


def test_command_prolog_pass_line_counts_checks(fake_nvml, capsys) -> None:
    code, out = _command(capsys)
    assert (code, out) == (0, "mltrain-health n1 PASS 2 checks\n")


def test_command_fail_line_record_and_drain(fake_nvml, capsys, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_NVML_BAD", "0")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "2")
    ran: list = []
    monkeypatch.setattr(H.subprocess, "run", lambda cmd, **kw: ran.append((cmd, kw)))
    record = tmp_path / "sub" / "h.jsonl"
    code, out = _command(capsys, record=str(record), drain=True)
    why = "gpu0 ecc: 3 uncorrected ECC errors; gpu0 throttle: hardware throttling: hw_thermal_slowdown"
    assert (code, out) == (1, f"mltrain-health n1 FAIL {why}\n")
    rec = json.loads(record.read_text())
    assert rec["host"] == "n1" and rec["job_id"] == "42" and rec["attempt"] == 2 and rec["status"] == FAIL
    assert rec["failures"] == why.split("; ") and len(rec["checks"]) == 4 and isinstance(rec["time"], float)
    assert rec["checks"][0] == {
        "name": "gpu0 ecc",
        "status": FAIL,
        "detail": "3 uncorrected ECC errors",
        "remedy": "drain; reset the GPU",
    }
    assert ran == [
        (["scontrol", "update", "NodeName=n1", "State=DRAIN", f"Reason=mltrain health: {why}"], {"check": False})
    ]


def test_command_drain_reason_is_cut_to_200(no_nvml, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(H.FAKE_TFLOPS_ENV, ",".join(["100"] * 20 + ["10"] * 10))
    ran: list = []
    monkeypatch.setattr(H.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    code, _ = _command(capsys, drain=True)
    assert code == 1 and len(ran) == 1
    reason = ran[0][-1]
    assert reason.startswith("Reason=mltrain health: gpu20 burn-in: ") and len(reason) == len("Reason=") + 200


def test_command_no_drain_when_not_failed_or_not_asked(fake_nvml, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    ran: list = []
    monkeypatch.setattr(H.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    assert _command(capsys, drain=True)[0] == 0
    monkeypatch.setenv("FAKE_NVML_BAD", "1")
    assert _command(capsys, drain=False)[0] == 1
    assert ran == []


def test_command_json(fake_nvml, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    code, out = _command(capsys, json_out=True)
    doc = json.loads(out)
    assert code == 0 and out.startswith('{\n  "time"')  # indent 2
    assert doc["status"] == PASS and doc["attempt"] == 0 and doc["job_id"] is None and doc["failures"] == []
    assert [c["name"] for c in doc["checks"]] == ["gpu0", "gpu1"]


def test_command_fake_failure_overrides_a_skip(no_nvml, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(H.FAKE_FAIL_HOSTS_ENV, "n1")
    code, out = _command(capsys)
    assert code == 1 and out == f"mltrain-health n1 FAIL fake failure: {H.FAKE_FAIL_HOSTS_ENV} names n1 (tests only)\n"


def test_command_table_output(fake_nvml, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console

    monkeypatch.setenv("FAKE_NVML_BAD", "1")
    console = Console(width=200, force_terminal=False)
    code = H.health_command(
        burn_in_s=0, tolerance=0.1, json_out=False, slurm_prolog=False, record=None, drain=False, console=console
    )
    out = capsys.readouterr().out
    assert code == 1 and "mltrain health on n1: FAIL" in out and "gpu1 ecc" in out and "mltrain-health" not in out


def test_burn_in_measures_every_gpu_for_the_time_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    """No GPU here: a mock of the CUDA calls that runs the same matmuls on CPU (torch.device("cuda", i)
    becomes the tag "cuda:i", randn on it a CPU tensor; synchronize records the tag). What is checked is
    burn_in's own logic: one thread per GPU, each on its own device, timing for `seconds`."""
    import time as _time

    import torch

    synced: list = []
    made: list = []
    real_randn = torch.randn
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 3)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: synced.append(d))
    monkeypatch.setattr(torch, "device", lambda kind, idx=None: f"{kind}:{idx}")

    def randn(*shape, device=None, dtype=None):
        made.append(device)
        return real_randn(*shape, dtype=dtype)

    monkeypatch.setattr(torch, "randn", randn)
    t0 = _time.perf_counter()
    got, errors = H.burn_in(0.2, n=16)
    assert _time.perf_counter() - t0 >= 0.2
    assert errors == {} and sorted(got) == [0, 1, 2] and all(v > 0 for v in got.values())
    assert sorted(made) == ["cuda:0", "cuda:0", "cuda:1", "cuda:1", "cuda:2", "cuda:2"]  # a and b on each GPU
    assert set(synced) == {"cuda:0", "cuda:1", "cuda:2"} and len(synced) >= 3 * 2


def test_burn_in_tflops_formula_on_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """One (mocked, see above) GPU and a clock that advances 0.1 s per reading: the loop runs while
    less than `seconds` passed, 10 matmuls per round, and reports 2 n^3 x matmuls / elapsed."""
    import itertools

    import torch

    real_device = torch.device
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda d=None: None)
    monkeypatch.setattr(
        torch, "device", lambda kind, idx=None: real_device("cpu") if kind == "cuda" else real_device(kind)
    )
    ticks = itertools.count(10000)
    monkeypatch.setattr(H.time, "perf_counter", lambda: next(ticks) / 10)
    got = H.burn_in(0.25, n=8)
    # t0 = 1000.0; checks at +0.1 and +0.2 run 2 rounds (20 matmuls); +0.3 ends the loop; elapsed read at +0.4
    assert got == ({0: pytest.approx(2 * 8**3 * 20 / 0.4 / 1e12)}, {})


def test_live_xid_events_reach_the_rows(fake_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    pending = [SimpleNamespace(device=1, eventData=79)]

    def wait(es, timeout_ms):
        if pending:
            return pending.pop()
        raise fake_nvml.NVMLError("Timeout")

    monkeypatch.setattr(fake_nvml, "nvmlEventSetWait_v2", wait)
    got, _ = H.run_health(0, 0.1)
    assert [(c.name, c.status, c.detail) for c in got][-1] == ("xid 79", FAIL, "XID 79 on gpu1")


def test_faked_burn_in_is_added_to_the_nvml_rows(fake_nvml, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(H.FAKE_TFLOPS_ENV, "100,40")
    got, _ = H.run_health(0, 0.1)
    assert [(c.name, c.status) for c in got] == [
        ("gpu0", PASS),
        ("gpu1", PASS),
        ("gpu0 burn-in", PASS),
        ("gpu1 burn-in", FAIL),
    ]


def test_measured_burn_in_is_added_to_the_nvml_rows_with_the_tolerance(fake_nvml, monkeypatch) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(H, "burn_in", lambda s: ({0: 100.0, 1: 85.0, 2: 100.0}, {}))
    got, _ = H.run_health(1.0, 0.2)
    assert [(c.name, c.status) for c in got] == [
        ("gpu0", PASS),
        ("gpu1", PASS),
        ("gpu0 burn-in", PASS),
        ("gpu1 burn-in", PASS),  # 15% slower, within 20%
        ("gpu2 burn-in", PASS),
    ]
    assert H.run_health(1.0, 0.1)[0][-2].status == FAIL


def test_small_details(no_nvml, capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    assert H.judge_burnin({})[0].remedy == ""
    slow = H.judge_burnin({0: 100.0, 1: 100.0, 2: 40.0})[2]
    assert slow.detail == "40.0 TFLOP/s (node median 100.0): 60% slower than the median"
    assert H._fake_failure("XXXX") is None  # unset: nobody
    flushed: list = []
    monkeypatch.setattr(H, "print", lambda *a, **k: flushed.append(k.get("flush")), raising=False)
    H.health_command(
        burn_in_s=0, tolerance=0.1, json_out=False, slurm_prolog=True, record=None, drain=False, console=None
    )
    assert flushed == [True]  # the prolog line is out before Slurm acts on the exit code


def test_record_time_has_millisecond_precision(no_nvml, capsys, tmp_path: Path) -> None:
    record = tmp_path / "h.jsonl"
    _command(capsys, record=str(record))
    t = json.loads(record.read_text())["time"]
    assert t == round(t, 3)


def test_dmesg_is_given_ten_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess

    seen: list = []
    monkeypatch.setattr(
        H.subprocess, "run", lambda cmd, **kw: seen.append(kw) or subprocess.CompletedProcess(cmd, 0, "", "")
    )
    assert H.kernel_xids() == []
    assert seen == [{"capture_output": True, "text": True, "timeout": 10}]

    def hung(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, 10)

    monkeypatch.setattr(H.subprocess, "run", hung)
    assert H.kernel_xids() == []
