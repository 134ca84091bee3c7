"""`mltrain health`: is every GPU of this node fit to train? For a Slurm prolog / HealthCheckProgram.

NVML (nvidia-ml-py): ECC errors, retired pages and remapped rows, temperature, clocks, throttle reasons,
XID events (NVML's live events, plus the kernel log when it is readable); then a short bf16 matmul
burn-in on every GPU at once, each GPU's TFLOP/s judged against the node median (a GPU clearly below
its siblings has a thermal, power or hardware problem even when NVML reports nothing).

Exit codes (what a prolog needs): 0 = healthy (PASS, WARN or SKIP), 1 = FAIL (drain / exclude this
node). No NVML (a CPU node, no driver) prints one SKIP line and exits 0. `--slurm-prolog` prints one
line `mltrain-health <host> <STATUS> <reasons>`; `--record FILE` appends the verdict as a JSON line so
the batch script can exclude failed hosts on the next attempt (`mltrain health --failed-hosts FILE`).
"""

from __future__ import annotations

import json
import os
import re
import socket
import statistics
import subprocess
import threading
import time
from typing import Any

from mltrain.ops.checks import FAIL, PASS, SKIP, WARN, Check, worst
from mltrain.telemetry.nvml import HW_THROTTLE, GpuReading, NvmlUnavailable, nvml, read_gpus, xid_events

DEFAULT_TOLERANCE = 0.10  # a GPU more than 10% below the node median fails the burn-in
HOT_C = 85.0  # warn at this temperature when the GPU has no slowdown threshold of its own
# XIDs that mean the GPU or its memory/links are broken (NVIDIA's XID catalogue); others are often the
# application's own fault (13, 31, 43, 45) and only warn.
CRITICAL_XIDS = {48, 61, 62, 63, 64, 69, 74, 79, 92, 94, 95, 119, 120, 140}
FAKE_TFLOPS_ENV = "MLTRAIN_HEALTH_FAKE_TFLOPS"  # tests only: "100,101,40" replaces the measured burn-in
# tests only: "node2,node3" makes these hosts FAIL (the local Slurm cluster has no GPU to break)
FAKE_FAIL_HOSTS_ENV = "MLTRAIN_HEALTH_FAKE_FAIL_HOSTS"


def gpu_checks(r: GpuReading) -> list[Check]:
    """The NVML rows of one GPU."""
    g = f"gpu{r.index}"
    rows: list[Check] = []
    if r.ecc_uncorrected:
        rows.append(Check(f"{g} ecc", FAIL, f"{r.ecc_uncorrected} uncorrected ECC errors", "drain; reset the GPU"))
    if r.retired_pending:
        rows.append(Check(f"{g} retired pages", FAIL, "page retirement pending", "drain and reboot the node"))
    if r.remap_failure:
        rows.append(Check(f"{g} row remap", FAIL, "row remapping failed", "drain; the GPU needs replacing (RMA)"))
    elif r.remap_pending:
        rows.append(Check(f"{g} row remap", WARN, "row remap pending", "reset the GPU when the node is idle"))
    hw = sorted(set(r.throttle) & HW_THROTTLE)
    if hw:
        rows.append(Check(f"{g} throttle", FAIL, f"hardware throttling: {', '.join(hw)}", "check cooling and power"))
    elif {"sw_thermal_slowdown", "sw_power_cap"} & set(r.throttle):
        rows.append(Check(f"{g} throttle", WARN, f"throttled: {', '.join(r.throttle)}", "check cooling/power cap"))
    hot = r.slowdown_temp_c - 5 if r.slowdown_temp_c else HOT_C
    if r.temperature_c is not None and r.temperature_c >= hot:
        rows.append(Check(f"{g} temperature", WARN, f"{r.temperature_c:.0f} C (slowdown near)", "check cooling"))
    if not any(c.status != PASS for c in rows):
        clock = f", SM {r.sm_clock_mhz}/{r.sm_clock_max_mhz} MHz" if r.sm_clock_mhz is not None else ""
        temp = f"{r.temperature_c:.0f} C" if r.temperature_c is not None else "temp n/a"
        ecc = f"ecc corrected {r.ecc_corrected}" if r.ecc_corrected is not None else "ecc n/a"
        rows.append(Check(g, PASS, f"{r.name}, {temp}{clock}, {ecc}"))
    return rows


def kernel_xids() -> list[tuple[str, int]]:
    """(pci id, XID) from the kernel log of this boot, when it is readable (often root only)."""
    try:
        p = subprocess.run(["dmesg"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [(m.group(1), int(m.group(2))) for m in re.finditer(r"NVRM: Xid \(PCI:([^)]+)\): (\d+)", p.stdout)]


def xid_checks(live: list[tuple[int, int]], logged: list[tuple[str, int]]) -> list[Check]:
    rows = []
    for where, xid in [(f"gpu{i}", x) for i, x in live] + [(f"PCI {p}", x) for p, x in logged]:
        status = FAIL if xid in CRITICAL_XIDS else WARN
        rows.append(Check(f"xid {xid}", status, f"XID {xid} on {where}", "drain; see NVIDIA's XID catalogue"))
    return rows


# --------------------------------------------------------------------------- burn-in


def burn_in(seconds: float, n: int = 8192) -> tuple[dict[int, float], dict[int, str]]:
    """bf16 matmul TFLOP/s of every visible GPU, all at once (one thread each: same power/thermal load),
    and the error of each GPU whose burn-in raised (a thread's exception is otherwise lost, and that GPU
    would silently drop out of the median)."""
    import torch

    results: dict[int, float] = {}
    errors: dict[int, str] = {}

    def measure(dev: int) -> None:
        d = torch.device("cuda", dev)
        a = torch.randn(n, n, device=d, dtype=torch.bfloat16)
        b = torch.randn(n, n, device=d, dtype=torch.bfloat16)
        for _ in range(3):
            a @ b
        torch.cuda.synchronize(d)
        iters, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            for _ in range(10):
                a @ b
            torch.cuda.synchronize(d)
            iters += 10
        results[dev] = 2 * n**3 * iters / (time.perf_counter() - t0) / 1e12

    def run(dev: int) -> None:
        try:
            measure(dev)
        except Exception as e:
            errors[dev] = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"

    threads = [threading.Thread(target=run, args=(i,)) for i in range(torch.cuda.device_count())]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def burn_in_checks(seconds: float, tolerance: float) -> list[Check]:
    """The burn-in rows: each GPU against the median of those that ran, and a FAIL for each that crashed."""
    tflops, errors = burn_in(seconds)
    rows = judge_burnin(tflops, tolerance) if tflops else []
    rows += [
        Check(f"gpu{i} burn-in", FAIL, f"burn-in crashed: {err}", "drain; run nvidia-smi and check the kernel log")
        for i, err in errors.items()
    ]
    return sorted(rows, key=lambda c: int(c.name[3:].split()[0])) or judge_burnin({}, tolerance)


def judge_burnin(tflops: dict[int, float], tolerance: float = DEFAULT_TOLERANCE) -> list[Check]:
    """FAIL every GPU slower than the node median by more than `tolerance` (a fraction)."""
    if not tflops:
        return [Check("burn-in", SKIP, "no GPU to burn in", "")]
    median = statistics.median(tflops.values())
    rows = []
    for idx, value in sorted(tflops.items()):
        slow = value < median * (1 - tolerance)
        detail = f"{value:.1f} TFLOP/s (node median {median:.1f})"
        if slow:
            rows.append(
                Check(
                    f"gpu{idx} burn-in",
                    FAIL,
                    f"{detail}: {100 * (1 - value / median):.0f}% slower than the median",
                    "drain; check clocks, cooling, power and PCIe/NVLink",
                )
            )
        else:
            rows.append(Check(f"gpu{idx} burn-in", PASS, detail))
    return rows


def _fake_tflops() -> dict[int, float] | None:
    raw = os.environ.get(FAKE_TFLOPS_ENV)
    if not raw:
        return None
    return {i: float(x) for i, x in enumerate(raw.split(","))}


# --------------------------------------------------------------------------- command


def run_health(burn_in_s: float, tolerance: float) -> tuple[list[Check], str | None]:
    """(rows, skip reason). The skip reason is set when there is no NVML at all."""
    fake = _fake_tflops()
    try:
        nv = nvml()
    except NvmlUnavailable as e:
        if fake is None:
            return [Check("nvml", SKIP, str(e), "no GPU health checks on this node")], str(e)
        nv = None  # tests: judge the faked burn-in without NVML
    rows: list[Check] = []
    if nv is not None:
        try:
            for r in read_gpus(nv):
                rows += gpu_checks(r)
            rows += xid_checks(xid_events(nv), kernel_xids())
        except Exception as e:  # a GPU NVML cannot read (lost, fallen off the bus) is the worst sign of all
            rows.append(
                Check("nvml", FAIL, f"reading the GPUs failed: {type(e).__name__}: {e}", "drain; run nvidia-smi")
            )
    if fake is not None:
        rows += judge_burnin(fake, tolerance)
    elif burn_in_s > 0:
        import torch

        if torch.cuda.is_available():
            rows += burn_in_checks(burn_in_s, tolerance)
        else:
            rows.append(Check("burn-in", SKIP, "torch sees no CUDA device", "install a CUDA torch build"))
    return rows, None


def this_host() -> str:
    """The Slurm node name inside a job step (what ExcNodeList and `scontrol update NodeName=` take; it can
    differ from the hostname), else the short hostname."""
    return os.environ.get("SLURMD_NODENAME") or socket.gethostname().split(".")[0]


def _fake_failure(host: str) -> Check | None:
    hosts = {h.strip() for h in os.environ.get(FAKE_FAIL_HOSTS_ENV, "").split(",") if h.strip()}
    if host not in hosts:
        return None
    return Check("fake failure", FAIL, f"{FAKE_FAIL_HOSTS_ENV} names {host} (tests only)", "unset it")


def read_records(record_path: str, empty_ok: bool = False) -> list[dict[str, Any]]:
    """The records of a `--record` file. Unlike the run's event logs, little here may be skipped: an
    empty answer tells the batch script that no node failed. A missing or unreadable file, a line that
    is neither JSON nor the start of a record, a record without host/status, or a file without one complete
    record is a ConfigError naming the file (and line); `empty_ok` (the caller knows which hosts must have
    a record) accepts a missing file or one without records as no records. Only a torn record (a line
    starting with `{` that does not parse: a check killed mid-write, perhaps followed by a later attempt's
    lines) is left out; that host, having no record, counts as failed when it is expected."""
    from mltrain.errors import ConfigError

    try:
        with open(record_path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        if empty_ok:
            return []
        raise ConfigError(f"{record_path}: does not exist (no health check wrote a record there)") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{record_path}: cannot read: {getattr(e, 'strerror', None) or e}") from None
    out = []
    for no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            if line.lstrip().startswith("{"):
                continue  # a torn record
            raise ConfigError(
                f"{record_path}: line {no}: not JSON ({e.msg}); not a `mltrain health --record` file"
            ) from None
        if not isinstance(rec, dict):
            raise ConfigError(f"{record_path}: line {no}: not a JSON object; not a `mltrain health --record` file")
        for key in ("host", "status"):
            if not isinstance(rec.get(key), str):
                raise ConfigError(f"{record_path}: line {no}: no '{key}' in the record")
        if rec["status"] not in (PASS, WARN, FAIL, SKIP):
            raise ConfigError(f"{record_path}: line {no}: status {rec['status']!r} is not PASS, WARN, FAIL or SKIP")
        out.append(rec)
    if not out and not empty_ok:
        raise ConfigError(f"{record_path}: no complete health record in it")
    return out


def failed_hosts(
    record_path: str, job_id: str | None = None, attempt: int | None = None, expected: list[str] | None = None
) -> list[str]:
    """Hosts whose newest health record (for `job_id` and its `attempt`, when given) is FAIL: the next
    attempt's --exclude. With `attempt`, a node that failed an earlier attempt (and was excluded since)
    does not count again. `expected`: hosts that must have a record; one without is counted as failed
    (its check hung or never ran; so with `expected`, a missing file fails them all). A file that cannot
    be trusted raises ConfigError (see read_records)."""
    newest: dict[str, str] = {}
    for rec in read_records(record_path, empty_ok=bool(expected)):
        if job_id is not None and str(rec.get("job_id")) != str(job_id):
            continue
        if attempt is not None and rec.get("attempt", 0) != attempt:
            continue
        newest[rec["host"]] = rec["status"]
    missing = {h for h in expected or [] if h not in newest}
    return sorted({h for h, s in newest.items() if s == FAIL} | missing)


def health_command(
    *,
    burn_in_s: float,
    tolerance: float,
    json_out: bool,
    slurm_prolog: bool,
    record: str | None,
    drain: bool,
    console: Any,
) -> int:
    host = this_host()
    rows, skipped = run_health(burn_in_s, tolerance)
    fake = _fake_failure(host)
    if fake is not None:
        rows, skipped = [*rows, fake], None
    status = worst(rows) if not skipped else SKIP
    failures = [f"{c.name}: {c.detail}" for c in rows if c.status == FAIL]
    doc = {
        "time": round(time.time(), 3),
        "host": host,
        "job_id": os.environ.get("SLURM_JOB_ID"),
        # the job's attempt (Slurm leaves SLURM_RESTART_COUNT unset before the first requeue)
        "attempt": int(os.environ.get("SLURM_RESTART_COUNT") or 0),
        "status": status,
        "failures": failures,
        "checks": [c.as_dict() for c in rows],
    }
    if record:
        from mltrain.fsutil import append_jsonl

        append_jsonl(record, doc)
    if drain and status == FAIL:
        reason = ("mltrain health: " + "; ".join(failures))[:200]
        subprocess.run(["scontrol", "update", f"NodeName={host}", "State=DRAIN", f"Reason={reason}"], check=False)
    if json_out:
        print(json.dumps(doc, indent=2))
    elif slurm_prolog or skipped:
        why = "; ".join(failures) if failures else (skipped or f"{len(rows)} checks")
        print(f"mltrain-health {host} {status} {why}", flush=True)
    else:
        from mltrain.ops.checks import print_table

        print_table(rows, f"mltrain health on {host}: {status}", console)
    return 1 if status == FAIL else 0
