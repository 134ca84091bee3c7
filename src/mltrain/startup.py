"""Process start-up without the garbage collector's scans of what the imports build.

Importing torch and the trainer creates ~400k GC-tracked objects (modules, classes, torch's operator
registry) that live until the process exits. CPython's cyclic GC scans all of them in every full collection
while they are being created, and once more at exit: measured on the 2-core test machine, a process that
imports the trainer spent 3.25 s of CPU with the GC as it is and 1.89 s with it off during the imports and
those objects frozen afterwards (+1.5 MB RSS: the few thousand cyclic leftovers of the imports stay). Every
torchrun worker and every `mltrain` command pays this at each start, on a cluster as in the tests.

The work itself runs with the GC on, as usual: only objects alive when `settle()` runs leave its view."""

from __future__ import annotations

import atexit
import gc
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_begun = False
_settled = False


def begin() -> None:
    """At the start of a process, before its heavy imports: the GC waits until `settle()`; at exit it does not
    scan the whole heap once more (registered first, so it runs after every other exit handler)."""
    global _begun
    if _begun:
        return
    _begun = True
    gc.disable()
    atexit.register(gc.freeze)


def settle() -> None:
    """The imports are done: what they built leaves the GC's view, and the GC is on for the work. Once per
    process: a later call changes nothing."""
    global _settled
    if _settled:
        return
    _settled = True
    gc.freeze()
    gc.enable()


def begin_for_a_script(seconds: float = 30.0) -> None:
    """`begin()` for a process whose imports end where this module cannot see (a user's training script):
    `settle()` comes from mltrain's HF callback when the training starts, else after `seconds`, and at
    once in a child forked before then (a data loader worker), which no timer of ours reaches."""
    begin()
    timer = threading.Timer(seconds, settle)
    timer.daemon = True
    timer.start()
    os.register_at_fork(after_in_child=settle)


@contextmanager
def heavy_imports() -> Iterator[None]:
    """Import torch-sized modules inside this block: the GC is off while they load, and what they built is
    frozen afterwards. The GC is left on or off as it was."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        if was_on:
            gc.enable()
