"""A byte-level rich progress bar (bytes/s and ETA) that s3transfer's worker threads can advance."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)


class ByteProgress:
    """Wraps one rich task; `advance` is safe from any thread (rich's Progress locks internally)."""

    def __init__(self, progress: Progress | None, task: Any) -> None:
        self._progress = progress
        self._task = task

    def advance(self, n: int) -> None:
        if self._progress is not None:
            self._progress.advance(self._task, n)

    def add_total(self, n: int) -> None:
        if self._progress is not None:
            total = self._progress.tasks[self._task].total or 0
            self._progress.update(self._task, total=total + n)

    def describe(self, text: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=text)

    def subscriber(self) -> Any:
        """An s3transfer subscriber feeding this bar."""
        from s3transfer.subscribers import BaseSubscriber

        bar = self

        class _Sub(BaseSubscriber):
            def on_progress(self, future: Any, bytes_transferred: int, **kwargs: Any) -> None:
                bar.advance(bytes_transferred)

        return _Sub()


@contextlib.contextmanager
def byte_progress(description: str, console: Console | None, enabled: bool = True) -> Iterator[ByteProgress]:
    if not enabled or console is None:
        yield ByteProgress(None, None)
        return
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )
    with progress:
        yield ByteProgress(progress, progress.add_task(description, total=0))
