"""Readings from NVML (nvidia-ml-py, imported as `pynvml`), shared by `mltrain health` and the
Prometheus exporter. Every optional field is None when the GPU or driver does not support it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# nvmlClocksEventReasons bits (nvml.h); the hardware ones mean the GPU protects itself.
THROTTLE_BITS = {
    0x1: "gpu_idle",
    0x2: "applications_clocks_setting",
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal_slowdown",
    0x40: "hw_thermal_slowdown",
    0x80: "hw_power_brake_slowdown",
    0x100: "display_clock_setting",
}
HW_THROTTLE = {"hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown"}


class NvmlUnavailable(Exception):
    """No NVML here: nvidia-ml-py missing, no driver, or no GPU."""


@dataclass
class GpuReading:
    index: int
    name: str
    uuid: str
    temperature_c: float | None = None
    slowdown_temp_c: float | None = None
    util_pct: float | None = None
    mem_used_mib: float | None = None
    mem_free_mib: float | None = None
    power_w: float | None = None
    sm_clock_mhz: float | None = None
    sm_clock_max_mhz: float | None = None
    ecc_uncorrected: int | None = None  # volatile (since the last driver load)
    ecc_corrected: int | None = None
    retired_pages: int | None = None
    retired_pending: bool | None = None
    remap_failure: bool | None = None
    remap_pending: bool | None = None
    throttle: list[str] = field(default_factory=list)


def _s(x: Any) -> str:
    return x.decode() if isinstance(x, bytes) else str(x)


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception:  # NVMLError_NotSupported and friends: the field stays None
        return None


def nvml() -> Any:
    """The initialised pynvml module, or NvmlUnavailable saying why not."""
    try:
        import pynvml
    except ImportError:
        raise NvmlUnavailable("nvidia-ml-py is not installed (pip install 'mltrain[gpu]')") from None
    try:
        pynvml.nvmlInit()
    except Exception as e:
        raise NvmlUnavailable(f"NVML cannot start: {e}") from None
    return pynvml


def read_gpus(nv: Any | None = None) -> list[GpuReading]:
    """One reading per GPU NVML sees (raises NvmlUnavailable without NVML)."""
    nv = nv or nvml()
    out = []
    for i in range(nv.nvmlDeviceGetCount()):
        h = nv.nvmlDeviceGetHandleByIndex(i)
        r = GpuReading(index=i, name=_s(nv.nvmlDeviceGetName(h)), uuid=_s(_try(nv.nvmlDeviceGetUUID, h) or f"GPU-{i}"))
        r.temperature_c = _try(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU)
        r.slowdown_temp_c = _try(nv.nvmlDeviceGetTemperatureThreshold, h, nv.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN)
        util = _try(nv.nvmlDeviceGetUtilizationRates, h)
        r.util_pct = None if util is None else float(util.gpu)
        mem = _try(nv.nvmlDeviceGetMemoryInfo, h)
        if mem is not None:
            r.mem_used_mib, r.mem_free_mib = mem.used / 2**20, mem.free / 2**20
        power = _try(nv.nvmlDeviceGetPowerUsage, h)
        r.power_w = None if power is None else power / 1000.0
        r.sm_clock_mhz = _try(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM)
        r.sm_clock_max_mhz = _try(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM)
        r.ecc_uncorrected = _try(
            nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
        )
        r.ecc_corrected = _try(
            nv.nvmlDeviceGetTotalEccErrors, h, nv.NVML_MEMORY_ERROR_TYPE_CORRECTED, nv.NVML_VOLATILE_ECC
        )
        pages = _try(nv.nvmlDeviceGetRetiredPages, h, nv.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR)
        r.retired_pages = None if pages is None else len(pages)
        pending = _try(nv.nvmlDeviceGetRetiredPagesPendingStatus, h)
        r.retired_pending = None if pending is None else bool(pending)
        remap = _try(nv.nvmlDeviceGetRemappedRows, h)  # (corrected, uncorrected, pending, failure)
        if remap is not None:
            r.remap_pending, r.remap_failure = bool(remap[2]), bool(remap[3])
        get_reasons = getattr(nv, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            nv, "nvmlDeviceGetCurrentClocksThrottleReasons", None
        )
        bits = _try(get_reasons, h) if get_reasons else None
        r.throttle = [name for bit, name in THROTTLE_BITS.items() if bits and bits & bit]
        out.append(r)
    return out


def xid_events(nv: Any, wait_ms: int = 500) -> list[tuple[int, int]]:
    """(gpu index, XID) of critical XID events NVML reports within `wait_ms` (new events only)."""
    try:
        es = nv.nvmlEventSetCreate()
        for i in range(nv.nvmlDeviceGetCount()):
            _try(nv.nvmlDeviceRegisterEvents, nv.nvmlDeviceGetHandleByIndex(i), nv.nvmlEventTypeXidCriticalError, es)
    except Exception:
        return []
    events = []
    while True:
        try:
            ev = nv.nvmlEventSetWait_v2(es, wait_ms)
        except Exception:  # timeout: no more events
            break
        idx = _try(nv.nvmlDeviceGetIndex, ev.device)
        events.append((idx if idx is not None else -1, int(ev.eventData)))
        wait_ms = 1
    _try(nv.nvmlEventSetFree, es)
    return events
