"""Keep freed host memory in the process for CPU training (glibc malloc tuning, no math change).

A CPU training step allocates and frees the same few hundred activation and gradient buffers every
step. With glibc's defaults, buffers over the mmap threshold (128 KiB at start) come straight from
the kernel and go back on free, and the top of the heap is trimmed back to the kernel: every step
then pays a page fault per 4 KiB page it writes (~160 faults, ~350 us, for one [12, 64, 128] RMSNorm
forward + backward). Measured on the small char-level recipe, that is several percent of the step.
Raising the mmap and trim thresholds makes those buffers reused from the heap instead, like any
caching allocator does; the price is that up to `trim_threshold` bytes freed stay mapped.

Only glibc has `mallopt`; elsewhere (musl, macOS) this is a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 << 20  # glibc's maximum; larger buffers still come from mmap
TRIM_THRESHOLD_BYTES = 512 << 20

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap/trim thresholds once per process. True when they are set."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES)
    )
    return _done
