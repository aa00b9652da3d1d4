"""Progress of long commands on stderr (record, replay, eval, tune): one helper for all."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import Any, TextIO

PLAIN_EVERY_S = 2.0


class Progress:
    """Progress of a long run on stderr: a Rich bar on a terminal, else a plain line every
    ``every_s`` seconds (``<what>: <done>/<total> <unit>, <rate>/s``), the first at once.

    The bar is transient and the plain lines are no summary: the command prints its one
    summary line itself. Call ``update(done)`` from the thread doing the work; as a callback
    it is ``on_sent``/``on_record``/``progress`` of the loops it watches.
    """

    def __init__(
        self,
        what: str,
        total: int | None,
        unit: str,
        *,
        every_s: float = PLAIN_EVERY_S,
        stream: TextIO | None = None,
    ) -> None:
        self.what, self.total, self.unit, self.every_s = what, total, unit, every_s
        self._stream = stream
        self._bar: Any = None
        self._task: Any = None
        self._start = time.monotonic()
        self._last_line: float | None = None

    @property
    def stream(self) -> TextIO:
        return sys.stderr if self._stream is None else self._stream

    def __enter__(self) -> Progress:
        self._start = time.monotonic()
        if self.stream.isatty():
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeElapsedColumn,
            )
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn() if self.total else TextColumn("{task.completed}"),
                TextColumn(self.unit + ", {task.fields[rate]}"),
                TimeElapsedColumn(),
                console=Console(file=self.stream),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.what, total=self.total, rate="-")
        return self

    def update(self, done: int, total: int | None = None) -> None:
        if total is not None:
            self.total = total
        now = time.monotonic()
        elapsed = now - self._start
        rate = f"{done / elapsed:.1f}/s" if elapsed > 0 else "-"
        if self._bar is not None:
            self._bar.update(self._task, completed=done, total=self.total, rate=rate)
            return
        if self._last_line is not None and now - self._last_line < self.every_s:
            return
        self._last_line = now
        of = "" if self.total is None else f"/{self.total}"
        print(f"{self.what}: {done}{of} {self.unit}, {rate}", file=self.stream, flush=True)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
