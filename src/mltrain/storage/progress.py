"""A byte-level rich progress bar that s3transfer's worker threads can advance, and the one rate figure
a transfer reports.

The bar and the command's summary line show the same number: bytes really sent or received (not the
bytes of files skipped because they were already there) divided by the seconds since the bar started,
in MiB/s like the byte counts beside it. `ByteProgress` keeps those counters even when no bar is drawn
(`--json`, the checkpoint mirror), so the summary never computes its rate another way.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

MiB = 1 << 20


class ByteProgress:
    """Counts moved and skipped bytes over one timed interval, and feeds one rich task when drawn.
    `advance`/`skip` are safe from any thread."""

    def __init__(self, progress: Progress | None = None, task: Any = None) -> None:
        self._progress = progress
        self._task = task
        self._lock = threading.Lock()
        self._t0 = time.perf_counter()
        self._t1: float | None = None
        self.moved = 0
        self.skipped = 0

    def advance(self, n: int) -> None:
        """`n` bytes really went over the wire (negative when s3transfer rewinds a retried part)."""
        with self._lock:
            self.moved += n
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def skip(self, n: int) -> None:
        """`n` bytes are done without being sent (already there): they fill the bar, not the rate."""
        with self._lock:
            self.skipped += n
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def add_total(self, n: int) -> None:
        if self._progress is not None:
            total = self._progress.tasks[self._task].total or 0
            self._progress.update(self._task, total=total + n)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def finish(self) -> None:
        """Stop the clock (the bar's last frame and the summary then use the same seconds)."""
        if self._t1 is None:
            self._t1 = time.perf_counter()

    @property
    def seconds(self) -> float:
        return (self._t1 if self._t1 is not None else time.perf_counter()) - self._t0

    def mib_per_s(self) -> float | None:
        """Moved bytes over the interval, in MiB/s; None before any time has passed."""
        s = self.seconds
        return self.moved / MiB / s if s > 0 else None

    def subscriber(self) -> Any:
        """An s3transfer subscriber feeding this bar."""
        from s3transfer.subscribers import BaseSubscriber

        bar = self

        class _Sub(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                bar.advance(bytes_transferred)

        return _Sub()


class RateColumn(ProgressColumn):
    """The bar's rate: `ByteProgress.mib_per_s`, the figure the summary line prints."""

    def __init__(self, counter: ByteProgress) -> None:
        super().__init__()
        self.counter = counter

    def render(self, task: Any) -> Text:
        rate = self.counter.mib_per_s()
        text = "" if rate is None or not self.counter.moved else f"{rate:.1f} MiB/s"
        return Text(text, style="progress.data.speed")


def rate_text(mib_per_s: float | None) -> str:
    return f"{mib_per_s or 0:.1f} MiB/s"


@contextlib.contextmanager
def byte_progress(description: str, console: Console | None, enabled: bool = True) -> Iterator[ByteProgress]:
    """A counter (and a bar on `console` when enabled); its clock stops when the block ends."""
    if not enabled or console is None:
        counter = ByteProgress()
        try:
            yield counter
        finally:
            counter.finish()
        return
    counter = ByteProgress()
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        RateColumn(counter),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        counter._progress, counter._task = progress, progress.add_task(description, total=0)
        try:
            yield counter
        finally:
            counter.finish()
