"""`mltrain doctor`: is this node's software environment fit to train?

Versions (Python, torch, CUDA, cuDNN, NCCL), GPUs, EFA, the run dir (writable, free space), S3 with the
configured credentials, the Slurm client and Pyxis, and NCCL/EFA variables known to hurt. Every row is
PASS/WARN/FAIL with a remedy; FAIL means training here would break. `srun mltrain doctor` on every node
is the pre-flight. Nothing here raises: a check that crashes becomes a FAIL row naming the exception.
"""

from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mltrain.ops.checks import FAIL, PASS, SKIP, WARN, Check, worst

MIN_FREE_GIB = 50.0  # one 8B-model checkpoint with optimizer state is ~100 GB; below this, warn


def _run(cmd: list[str], timeout: float = 10.0) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        return p.returncode, (p.stdout + p.stderr)
    except FileNotFoundError:
        return 127, f"{cmd[0]}: not found"
    except subprocess.TimeoutExpired:
        return 124, f"{' '.join(cmd)}: timed out after {timeout:.0f}s"


def check_python() -> list[Check]:
    v = sys.version_info
    ok = v >= (3, 11)
    return [
        Check(
            "python",
            PASS if ok else FAIL,
            f"{platform.python_version()} ({sys.executable})",
            "" if ok else "use Python >= 3.11",
        )
    ]


def check_torch() -> list[Check]:
    import torch

    rows = [Check("torch", PASS, torch.__version__)]
    cuda = torch.version.cuda
    if torch.cuda.is_available():
        rows.append(Check("cuda", PASS, f"CUDA {cuda}, {torch.cuda.device_count()} device(s) visible"))
        cudnn = torch.backends.cudnn.version()
        rows.append(
            Check("cudnn", PASS if cudnn else WARN, str(cudnn or "not available"), "" if cudnn else "install cuDNN")
        )
        try:
            nccl = ".".join(str(x) for x in torch.cuda.nccl.version())
            rows.append(Check("nccl", PASS, nccl))
        except Exception as e:  # torch built without NCCL
            rows.append(Check("nccl", FAIL, f"unavailable ({e})", "install a torch build with NCCL"))
    else:
        why = "CPU-only torch build" if cuda is None else f"torch built for CUDA {cuda} but no device/driver"
        rows.append(Check("cuda", WARN, why, "on a GPU node: install the NVIDIA driver and a CUDA torch build"))
        rows.append(Check("cudnn", WARN, "no CUDA", "needs CUDA"))
        rows.append(Check("nccl", WARN, "no CUDA (gloo will be used)", "needs CUDA"))
    return rows


def check_gpus() -> list[Check]:
    """GPU names and memory from torch; the driver version from NVML when it is installed."""
    import torch

    if not torch.cuda.is_available():
        return [Check("gpus", WARN, "no GPU visible", "run on a GPU node; check CUDA_VISIBLE_DEVICES and nvidia-smi")]
    names: dict[str, int] = {}
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        key = f"{p.name} {p.total_memory / 2**30:.0f} GiB"
        names[key] = names.get(key, 0) + 1
    detail = ", ".join(f"{n} x {k}" for k, n in names.items())
    driver = "driver: unknown (nvidia-ml-py not installed)"
    try:
        import pynvml

        pynvml.nvmlInit()
        driver = f"driver {_s(pynvml.nvmlSystemGetDriverVersion())}"
        pynvml.nvmlShutdown()
    except Exception:
        pass
    return [Check("gpus", PASS, f"{detail}; {driver}")]


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def check_efa() -> list[Check]:
    if shutil.which("fi_info") is None:
        return [Check("efa", WARN, "fi_info not found (no libfabric)", "on EFA instances install the EFA software")]
    rc, out = _run(["fi_info", "-p", "efa"])
    if rc == 0 and "provider: efa" in out:
        n = out.count("provider: efa")
        return [Check("efa", PASS, f"efa provider: {n} endpoint(s)")]
    return [
        Check(
            "efa",
            WARN,
            "fi_info -p efa finds no EFA device",
            "expected on non-EFA instances; on p4d/p5 attach EFA (security group allowing all traffic to itself)",
        )
    ]


def check_run_dir(base: Path) -> list[Check]:
    """The runs dir must be writable (a probe file is created and removed); free space is reported."""
    runs = base / "runs"
    target = runs if runs.exists() else base
    try:
        target.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target, prefix=".doctor-", delete=True) as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        return [Check("run dir", FAIL, f"{target}: not writable ({e.strerror or e})", "fix permissions or base_dir")]
    free = shutil.disk_usage(target).free / 2**30
    status = PASS if free >= MIN_FREE_GIB else WARN
    remedy = "" if status == PASS else f"free space below {MIN_FREE_GIB:.0f} GiB: checkpoints may not fit"
    return [Check("run dir", status, f"{target.resolve()} writable, {free:.1f} GiB free", remedy)]


def check_s3(bucket: str | None) -> list[Check]:
    """The bucket is reachable with boto3's credentials and endpoint: through the storage layer, so a bad
    name, endpoint or credential is the same one line as in `mltrain data ...`."""
    if not bucket:
        return [Check("s3", SKIP, "no bucket configured", "")]
    try:
        import boto3  # noqa: F401
    except ImportError:
        return [Check("s3", WARN, "boto3 not installed", "pip install 'mltrain[s3]'")]
    from mltrain.storage.client import check_bucket, make_client
    from mltrain.storage.url import StorageError, parse_s3_url

    url = bucket if bucket.startswith("s3://") else f"s3://{bucket}"
    try:
        name = parse_s3_url(url).bucket
        check_bucket(make_client(), name)
    except StorageError as e:
        return [Check("s3", FAIL, str(e), "check the bucket name, credentials, region, endpoint and bucket policy")]
    return [Check("s3", PASS, f"s3://{name} reachable with the configured credentials")]


def check_slurm() -> list[Check]:
    if shutil.which("srun") is None:
        return [
            Check("slurm", WARN, "srun not found", "fine for a single machine; on a cluster install the Slurm client"),
            Check("pyxis", WARN, "no Slurm", "needs Slurm"),
        ]
    rc, out = _run(["srun", "--version"])
    if rc != 0:
        last = (out.strip().splitlines() or ["no output"])[-1]
        return [
            Check(
                "slurm", WARN, f"srun present but not configured: {last}", "check slurm.conf / slurmctld reachability"
            ),
            Check("pyxis", WARN, "Slurm not usable", "needs a working Slurm client"),
        ]
    rows = [Check("slurm", PASS, out.strip().splitlines()[0])]
    rc, help_text = _run(["srun", "--help"])
    if "--container-image" in help_text:
        rows.append(Check("pyxis", PASS, "srun --help lists --container-image"))
    else:
        rows.append(
            Check("pyxis", WARN, "srun has no --container-image", "install enroot + pyxis to run containers on Slurm")
        )
    return rows


# Besides the launcher's KNOWN_BAD: variables that are fine for debugging and costly in production.
_COSTLY = {
    "NCCL_DEBUG": ({"INFO", "TRACE"}, "INFO/TRACE logs slow start-up and flood the job log; use WARN"),
    "CUDA_LAUNCH_BLOCKING": ({"1"}, "serialises every kernel launch: training runs several times slower"),
    "NCCL_BLOCKING_WAIT": ({"1"}, "deprecated; use TORCH_NCCL_ASYNC_ERROR_HANDLING=1"),
    "TORCH_NCCL_BLOCKING_WAIT": ({"1"}, "blocks the CPU on every collective; use TORCH_NCCL_ASYNC_ERROR_HANDLING"),
}


def check_env(env: dict[str, str] | None = None) -> list[Check]:
    from mltrain.launch.nccl_env import KNOWN_BAD

    env = dict(os.environ) if env is None else env
    rows = []
    for name, why in KNOWN_BAD.items():
        if name in env:
            rows.append(Check(f"env {name}", WARN, f"{name}={env[name]}: {why}", f"unset {name}"))
    for name, (bad_values, why) in _COSTLY.items():
        if env.get(name, "").upper() in bad_values:
            rows.append(Check(f"env {name}", WARN, f"{name}={env[name]}: {why}", f"unset {name}"))
    if not rows:
        rows.append(Check("env", PASS, "no NCCL/EFA variables known to hurt"))
    return rows


def run_doctor(base_dir: Path, bucket: str | None = None) -> list[Check]:
    """Every check; a check that raises becomes a FAIL row instead of stopping the others."""
    steps: list[tuple[str, Callable[[], list[Check]]]] = [
        ("python", check_python),
        ("torch", check_torch),
        ("gpus", check_gpus),
        ("efa", check_efa),
        ("run dir", lambda: check_run_dir(base_dir)),
        ("s3", lambda: check_s3(bucket)),
        ("slurm", check_slurm),
        ("env", check_env),
    ]
    rows: list[Check] = []
    for name, fn in steps:
        try:
            rows += fn()
        except Exception as e:
            rows.append(Check(name, FAIL, f"check crashed: {type(e).__name__}: {e}", "report this as a bug"))
    return rows


def doctor_report(checks: list[Check]) -> dict[str, Any]:
    """The --json document (keys are stable: tests hold a golden list of them)."""
    return {
        "host": socket.gethostname(),
        "status": worst(checks),
        "checks": [c.as_dict() for c in checks],
    }


def doctor_command(config: Path | None, bucket: str | None, json_out: bool, console: Any) -> int:
    """Run the checks, print a table (or JSON); 1 when any row is FAIL."""
    import json

    from mltrain.rundir import default_base

    base = default_base()
    if config is not None:
        from mltrain.config import load_run_config

        cfg = load_run_config(config)
        base = Path(cfg.base_dir)
        if bucket is None:
            bucket = next((s for s in cfg.data.sources if s.startswith("s3://")), None)
    checks = run_doctor(base, bucket)
    report = doctor_report(checks)
    if json_out:
        print(json.dumps(report, indent=2))
    else:
        from mltrain.ops.checks import print_table

        print_table(checks, f"mltrain doctor on {report['host']}: {report['status']}", console)
    return 1 if report["status"] == FAIL else 0
