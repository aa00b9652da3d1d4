"""structlog set-up: JSON lines for journald and files, readable colours on a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable, MutableMapping
from typing import Any, Literal

import structlog

LogFormat = Literal["auto", "json", "console"]


class StderrLogger:
    """Writes each line to whatever ``sys.stderr`` is at the time, and never raises.

    A daemon thread must not die because its log stream went away (a closed pipe, a
    restarted journald, a test harness that swapped stderr): the frame matters more.
    """

    def __init__(self, *args: object) -> None:
        pass

    def msg(self, message: str) -> None:
        with contextlib.suppress(OSError, ValueError):
            print(message, file=sys.stderr, flush=True)

    log = debug = info = warning = warn = error = critical = exception = fatal = msg


class RateLimiter:
    """A structlog processor: at most ``burst`` warnings/errors per key per ``window_s``.

    A camera sending garbage at 50 fps must not write 50 identical lines a second to the
    journal. The key is the message and the camera, so each camera's trouble still shows; the
    first line after a quiet spell carries ``suppressed=N`` so nothing is hidden without trace.
    Lines below warning level are never limited.
    """

    def __init__(
        self, burst: int = 5, window_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.burst = burst
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        # key -> [window start, lines in window, suppressed since the last line written]
        self._seen: dict[tuple[str, str], list[float]] = {}

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        if method not in ("warning", "warn", "error", "exception", "critical"):
            return event_dict
        key = (str(event_dict.get("event")), str(event_dict.get("camera", "")))
        now = self._clock()
        with self._lock:
            if len(self._seen) > 10_000:  # forged camera ids must not grow this without bound
                self._seen.clear()
            state = self._seen.setdefault(key, [now, 0, 0])
            if now - state[0] >= self.window_s:
                state[0], state[1] = now, 0
            if state[1] >= self.burst:
                state[2] += 1
                raise structlog.DropEvent
            state[1] += 1
            if state[2]:
                event_dict["suppressed"] = int(state[2])
                state[2] = 0
        return event_dict


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            RateLimiter(),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=StderrLogger,
        cache_logger_on_first_use=False,
    )
