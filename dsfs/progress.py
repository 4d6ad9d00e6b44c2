"""Progress bars for long transfers (rich), shown on stderr only when it is a terminal.

`transfer()` yields a Tracker: `set_total(bytes, files)` once the work is known, then
`advance(bytes, files=0)` as it is done. A disabled tracker does nothing, so callers never check.
What the second count counts is the bar's `unit` (files by default; `dsfs check` counts versions).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn


class Tracker:
    def __init__(self, bar: Progress | None = None, task=None, unit: str = "files"):
        self.bar, self.task, self.unit = bar, task, unit
        self.files_total: int | None = None
        self.files_done = 0

    def set_total(self, total_bytes: int, files: int | None = None) -> None:
        self.files_total = files
        if self.bar is not None:
            self.bar.update(self.task, total=total_bytes, files=self._files())

    def advance(self, nbytes: int = 0, files: int = 0) -> None:
        """Thread-safe: rich's Progress locks; the file count is only ever read for display."""
        self.files_done += files
        if self.bar is not None:
            self.bar.update(self.task, advance=nbytes, files=self._files())

    def _files(self) -> str:
        if self.files_total is None:
            return ""
        return f"{self.files_done}/{self.files_total} {self.unit}"


@contextlib.contextmanager
def transfer(description: str, total_bytes: int | None = None, enabled: bool | None = None,
             unit: str = "files") -> Iterator[Tracker]:
    """Yield a Tracker rendering description, bar, files, bytes, rate and ETA."""
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        yield Tracker()
        return
    columns = (TextColumn("{task.description}"), BarColumn(), TextColumn("{task.fields[files]}"),
               DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(description, total=total_bytes, files="")
        yield Tracker(bar, task, unit)
