"""Progress of a run: a live bar on a terminal, plain log lines otherwise."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBar

from loader.runs.logs import current_format, lines


class Progress(Protocol):
    def status(self, message: str) -> None: ...
    def file_started(self, name: str, rows: int) -> None: ...
    def advance(self, rows: int) -> None: ...
    def file_done(self, name: str) -> None: ...
    def close(self) -> None: ...


class LogProgress:
    """One line per step and about one line every few seconds per file, for logs and pipes."""

    def __init__(self, out: TextIO, every_seconds: float = 5.0) -> None:
        self._log = lines("loader.progress", lambda: out, "%H:%M:%S")
        self._every = every_seconds
        self._name = ""
        self._rows = 0
        self._total = 0
        self._last = 0.0

    def _print(self, message: str) -> None:
        self._log.info(message)

    def status(self, message: str) -> None:
        self._print(message)

    def file_started(self, name: str, rows: int) -> None:
        self._name, self._rows, self._total, self._last = name, 0, rows, time.monotonic()
        self._print(f"landing {name}: {rows:,} rows")

    def advance(self, rows: int) -> None:
        self._rows += rows
        now = time.monotonic()
        if now - self._last >= self._every:
            self._last = now
            self._print(f"landing {self._name}: {self._rows:,}/{self._total:,} rows")

    def file_done(self, name: str) -> None:
        self._print(f"parsed {name}: {self._rows:,} rows")

    def close(self) -> None:
        pass


class BarProgress:
    """A rich progress bar over files and rows."""

    def __init__(self, console: Console) -> None:
        self._bar = RichBar(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=False,
        )
        self._bar.start()
        self._task: TaskID | None = None

    def status(self, message: str) -> None:
        self._bar.console.log(message)

    def file_started(self, name: str, rows: int) -> None:
        self._task = self._bar.add_task(f"landing {name}", total=rows or None)

    def advance(self, rows: int) -> None:
        if self._task is not None:
            self._bar.advance(self._task, rows)

    def file_done(self, name: str) -> None:
        if self._task is not None:
            self._bar.update(self._task, description=f"parsed {name}")

    def close(self) -> None:
        self._bar.stop()


def make_progress(out: TextIO | None = None) -> Progress:
    """Progress on `out`, by default the stderr of the moment (not the one there was when this module loaded)."""
    out = out or sys.stderr
    # A bar is for people; with LOADER_LOG_FORMAT=json the lines are for a log collector, even on a terminal.
    if out.isatty() and current_format() == "text":
        return BarProgress(Console(file=out))
    return LogProgress(out)
