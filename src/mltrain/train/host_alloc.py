"""Keep freed host memory in the process for CPU training (glibc malloc tuning, no math change).

A CPU training step allocates and frees the same few hundred activation and gradient buffers every
step. With glibc's defaults, buffers over the mmap threshold (128 KiB at start) come straight from
the kernel and go back on free, and the top of the heap is trimmed back to the kernel: every step
then pays a page fault per 4 KiB page it writes (~160 faults, ~350 us, for one [12, 64, 128] RMSNorm
forward + backward). Measured on the small char-level recipe, that is several percent of the step.
Raising the mmap and trim thresholds makes those buffers reused from the heap instead, like any
caching allocator does; the price is that up to `trim_threshold` bytes freed stay mapped.

Only glibc has `mallopt`; elsewhere (musl, macOS) this is a no-op.

`mltrain train` also re-executes itself once with GLIBC_TUNABLES=glibc.malloc.hugetlb=1 (glibc >= 2.35, THP
not disabled; `MLTRAIN_HOST_HUGEPAGES=0` opts out): the reused heap then sits on transparent huge pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys
from pathlib import Path

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


# --------------------------------------------------------------------------- huge pages for the heap

HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT_ENV = "MLTRAIN_HOST_HUGEPAGES"  # "0": leave glibc's defaults alone
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"


def hugepage_tunables(environ: dict[str, str] | os._Environ[str], thp_path: str = _THP) -> str | None:
    """The GLIBC_TUNABLES value that puts malloc's heap on transparent huge pages, or None when it is already
    set, opted out, or cannot work here (not glibc >= 2.35, THP disabled).

    Why: with `keep_freed_memory` a CPU training step reuses a heap of tens of MB; on 4 KiB pages its
    elementwise passes miss the TLB constantly. On the small char-level recipe (1 thread) the step went
    from ~67 to ~62.5 ms with the heap on huge pages. glibc reads tunables only at process start, hence
    the re-exec in `reexec_for_hugepages`.
    """
    if environ.get(OPT_OUT_ENV) == "0" or not sys.platform.startswith("linux"):
        return None
    current = environ.get("GLIBC_TUNABLES", "")
    if "glibc.malloc.hugetlb" in current:
        return None
    try:
        lib, _, version = os.confstr("CS_GNU_LIBC_VERSION").partition(" ")  # "glibc 2.36"
        if lib != "glibc" or tuple(int(x) for x in version.split(".")[:2]) < (2, 35):
            return None
        if "[never]" in Path(thp_path).read_text():
            return None
    except (OSError, ValueError, TypeError):
        return None
    return f"{current}:{HUGEPAGE_TUNABLE}" if current else HUGEPAGE_TUNABLE


def reexec_for_hugepages(argv: list[str]) -> None:
    """Start `python -m mltrain ARGV` again, in place (same pid, so torchrun and Slurm see no change), with
    the heap on huge pages; returns without doing anything when `hugepage_tunables` says no."""
    value = hugepage_tunables(os.environ)
    if value is None:
        return
    os.environ["GLIBC_TUNABLES"] = value
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(sys.executable, [sys.executable, "-m", "mltrain", *argv])
    except OSError:
        os.environ[OPT_OUT_ENV] = "0"  # run on as we are
