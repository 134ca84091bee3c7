"""A stand-in for nvidia-ml-py (`pynvml`) on machines without an NVIDIA driver: TEST DATA ONLY.

No GPU exists here, so the tests that exercise mltrain's NVML readers (health rows, the Prometheus
GPU collector) put this directory first on PYTHONPATH. Two fake H100s; FAKE_NVML_BAD=<index> gives that
GPU 3 uncorrected ECC errors and hardware thermal slowdown. FAKE_NVML_FAULT=<fault>@<index>[,...] adds one
fault: retired_pending (page retirement pending), remap_failure, remap_pending, xid<N> (a critical-XID
event N), crash (reading that GPU's name raises). Only the calls mltrain makes exist.
"""

from __future__ import annotations

import os
from types import SimpleNamespace

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_CLOCK_SM = 1
NVML_MEMORY_ERROR_TYPE_CORRECTED = 0
NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 1
NVML_VOLATILE_ECC = 0
NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR = 1
nvmlEventTypeXidCriticalError = 8


class NVMLError(Exception):
    pass


def _bad(h: int) -> bool:
    return os.environ.get("FAKE_NVML_BAD", "") == str(h)


def _faults() -> list[tuple[str, int]]:
    out = []
    for item in os.environ.get("FAKE_NVML_FAULT", "").split(","):
        if "@" in item:
            kind, idx = item.strip().split("@")
            out.append((kind, int(idx)))
    return out


def _fault(kind: str, h: int) -> bool:
    return (kind, h) in _faults()


def nvmlInit() -> None:
    pass


def nvmlShutdown() -> None:
    pass


def nvmlSystemGetDriverVersion() -> str:
    return "550.90.07"


def nvmlDeviceGetCount() -> int:
    return 2


def nvmlDeviceGetHandleByIndex(i: int) -> int:
    return i


def nvmlDeviceGetIndex(h: int) -> int:
    return h


def nvmlDeviceGetName(h: int) -> str:
    if _fault("crash", h):
        raise NVMLError("GPU is lost")
    return "NVIDIA H100 80GB HBM3"


def nvmlDeviceGetUUID(h: int) -> str:
    return f"GPU-fake-{h:04d}"


def nvmlDeviceGetTemperature(h: int, sensor: int) -> int:
    return 91 if _bad(h) else 40 + h


def nvmlDeviceGetTemperatureThreshold(h: int, kind: int) -> int:
    return 90


def nvmlDeviceGetUtilizationRates(h: int) -> SimpleNamespace:
    return SimpleNamespace(gpu=90 + h, memory=30)


def nvmlDeviceGetMemoryInfo(h: int) -> SimpleNamespace:
    return SimpleNamespace(used=(10 + h) * 2**30, free=(70 - h) * 2**30, total=80 * 2**30)


def nvmlDeviceGetPowerUsage(h: int) -> int:
    return 650_000 + 1000 * h  # milliwatts


def nvmlDeviceGetClockInfo(h: int, clock: int) -> int:
    return 1980


def nvmlDeviceGetMaxClockInfo(h: int, clock: int) -> int:
    return 1980


def nvmlDeviceGetTotalEccErrors(h: int, kind: int, counter: int) -> int:
    return 3 if (_bad(h) and kind == NVML_MEMORY_ERROR_TYPE_UNCORRECTED) else 0


def nvmlDeviceGetRetiredPages(h: int, cause: int) -> list[int]:
    if _fault("retired_pending", h):
        return [0x1F000]
    raise NVMLError("Not Supported")  # H100 uses row remapping instead


def nvmlDeviceGetRetiredPagesPendingStatus(h: int) -> int:
    if _fault("retired_pending", h):
        return 1
    raise NVMLError("Not Supported")


def nvmlDeviceGetRemappedRows(h: int) -> tuple[int, int, int, int]:
    # (corrected rows, uncorrected rows, pending, failure)
    return (0, 1 if _fault("remap_failure", h) else 0, int(_fault("remap_pending", h)), int(_fault("remap_failure", h)))


def nvmlDeviceGetCurrentClocksEventReasons(h: int) -> int:
    return 0x40 if _bad(h) else 0x0


def nvmlEventSetCreate() -> SimpleNamespace:
    xids = [(int(kind[3:]), h) for kind, h in _faults() if kind.startswith("xid")]
    return SimpleNamespace(pending=[SimpleNamespace(device=h, eventData=x) for x, h in xids])


def nvmlDeviceRegisterEvents(h: int, types: int, es: object) -> None:
    pass


def nvmlEventSetWait_v2(es: SimpleNamespace, timeout_ms: int) -> SimpleNamespace:
    if es.pending:
        return es.pending.pop(0)
    raise NVMLError("Timeout")


def nvmlEventSetFree(es: object) -> None:
    pass
