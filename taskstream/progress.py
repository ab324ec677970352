"""Progress of a long operator command: a rich bar on a terminal, plain log lines otherwise.

Both show events done (of the total), the rate and the time left. The bar redraws at most ten
times a second; the log writes a line every ``interval`` seconds, so a log collector is not
flooded by a replay of a billion events.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any, TextIO


class LogProgress:
    def __init__(self, what: str = "replay", *, interval: float = 5.0, logger: logging.Logger | None = None) -> None:
        self.what = what
        self.interval = interval
        self.log = logger or logging.getLogger(f"taskstream.{what}")
        self.total = 0
        self.done = 0
        self._started = time.monotonic()
        self._last = 0.0

    def start(self, total: int, done: int = 0) -> None:
        self.total, self.done = total, done
        self._started = self._last = time.monotonic()
        self.log.info("%s: %d events to fold", self.what, total)

    def advance(self, events: int) -> None:
        self.done += events
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self.log.info("%s", self.line(now))

    def line(self, now: float | None = None) -> str:
        elapsed = max(1e-9, (now or time.monotonic()) - self._started)
        rate = self.done / elapsed
        left = max(0, self.total - self.done) / rate if rate > 0 else float("inf")
        percent = 100.0 * self.done / self.total if self.total else 100.0
        eta = f"{left:.0f} s left" if left != float("inf") else "time left unknown"
        return f"{self.what}: {self.done}/{self.total} events ({percent:.1f} %), {rate:,.0f} events/s, {eta}"

    def note(self, message: str) -> None:
        self.log.info("%s", message)

    def close(self) -> None:
        self.log.info("%s (done)", self.line())


class RichProgress:
    def __init__(self, what: str = "replay", *, stream: TextIO | None = None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.console = Console(file=stream or sys.stderr)
        self._progress = Progress(
            TextColumn(f"[bold]{what}"), BarColumn(), MofNCompleteColumn(), TextColumn("events"),
            TextColumn("{task.fields[rate]}"), TimeRemainingColumn(), console=self.console, refresh_per_second=10,
        )  # fmt: skip
        self._task: Any = None
        self._started = time.monotonic()
        self._done = 0

    def start(self, total: int, done: int = 0) -> None:
        self._started = time.monotonic()
        self._done = done
        self._progress.start()
        self._task = self._progress.add_task("fold", total=total, completed=done, rate="")

    def advance(self, events: int) -> None:
        self._done += events
        rate = self._done / max(1e-9, time.monotonic() - self._started)
        if self._task is not None:
            self._progress.update(self._task, advance=events, rate=f"{rate:,.0f}/s")

    def note(self, message: str) -> None:
        self.console.print(message)

    def close(self) -> None:
        self._progress.stop()


def for_terminal(what: str = "replay", stream: TextIO | None = None) -> LogProgress | RichProgress:
    """A bar when ``stream`` (default stderr) is a terminal, log lines otherwise."""
    stream = stream or sys.stderr
    if stream.isatty():
        return RichProgress(what, stream=stream)
    return LogProgress(what)
