"""structlog set-up: JSON lines for journald and files, readable colours on a terminal."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
import time
from collections import OrderedDict
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


_LIMITED_LEVELS = frozenset({"warning", "warn", "error", "exception", "critical"})
# Sources of one message past the table's cap share this one key; their counts are kept.
_OTHER_SOURCES = "\x00other sources"
_OTHER_MESSAGES = "\x00other messages"


class _Window:
    __slots__ = ("lines", "start", "suppressed")

    def __init__(self, start: float) -> None:
        self.start = start
        self.lines = 0
        self.suppressed = 0


class RateLimiter:
    """A structlog processor that limits warnings/errors repeated per frame (or per connection).

    A camera sending garbage at 50 fps must not write 50 identical lines a second to the
    journal, and 3,200 forged camera ids must not write 3,200. Limited are the lines that carry
    a ``camera`` key (the per-frame lines) and those that opt in with ``throttle=True`` or
    ``throttle="<source>"`` (the key is removed from the line). For those, per ``window_s``:
    at most ``burst`` lines per (message, source), so each camera's trouble still shows, and at
    most ``budget`` per message across all sources. Every dropped line is counted: the next
    line of that message that gets through, from any source, carries ``suppressed=N``.
    Other lines (reload outcomes, startup errors, thread failures) and lines below warning
    level are never dropped.
    """

    def __init__(
        self,
        burst: int = 5,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        *,
        budget: int = 20,
        max_keys: int = 1000,
    ) -> None:
        self.burst = burst
        self.budget = budget
        self.window_s = window_s
        self.max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        # (message, source) -> its burst window. Entries are never restarted in place, so the
        # order is that of window starts and expired ones are popped from the front.
        self._sources: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        # message -> its budget window, and the count suppressed across sources.
        self._messages: dict[str, _Window] = {}

    def table_size(self) -> int:
        with self._lock:
            return len(self._sources) + len(self._messages)

    def __call__(
        self, logger: Any, method: str, event_dict: MutableMapping[str, Any]
    ) -> MutableMapping[str, Any]:
        throttle = event_dict.pop("throttle", None)
        if method not in _LIMITED_LEVELS:
            return event_dict
        if "camera" in event_dict:
            source = str(event_dict["camera"])
        elif throttle:
            source = throttle if isinstance(throttle, str) else ""
        else:
            return event_dict
        now = self._clock()
        with self._lock:
            self._expire(now)
            message, total = self._message(str(event_dict.get("event")), now)
            key = (message, source)
            if key not in self._sources and len(self._sources) >= self.max_keys:
                key = (message, _OTHER_SOURCES)
            window = self._sources.get(key)
            if window is not None and window.lines >= self.burst:
                window.suppressed += 1
                raise structlog.DropEvent
            if total.lines >= self.budget:
                total.suppressed += 1
                raise structlog.DropEvent
            if window is None:
                # Only lines that get through make an entry: at most ``budget`` per window.
                window = self._sources[key] = _Window(now)
            window.lines += 1
            total.lines += 1
            suppressed = window.suppressed + total.suppressed
            window.suppressed = total.suppressed = 0
        if suppressed:
            event_dict["suppressed"] = suppressed
        return event_dict

    def _expire(self, now: float) -> None:
        while self._sources:
            key, window = next(iter(self._sources.items()))
            if now - window.start < self.window_s:
                return
            del self._sources[key]
            if window.suppressed:  # handed to the message, so the next line of it reports them
                self._messages.setdefault(key[0], _Window(now)).suppressed += window.suppressed

    def _message(self, message: str, now: float) -> tuple[str, _Window]:
        total = self._messages.get(message)
        if total is None:
            if len(self._messages) >= self.max_keys:
                # Messages are constants in code; this is only reached by a bug. Drop those
                # that hold nothing, else share one key.
                for name in [n for n, w in self._messages.items() if self._idle(n, w, now)]:
                    del self._messages[name]
            if len(self._messages) >= self.max_keys:
                message = _OTHER_MESSAGES
            total = self._messages.setdefault(message, _Window(now))
        if now - total.start >= self.window_s:
            total.start, total.lines = now, 0
        return message, total

    def _idle(self, message: str, window: _Window, now: float) -> bool:
        return (
            now - window.start >= self.window_s
            and not window.suppressed
            and message != _OTHER_MESSAGES
        )


class _StderrHandler(logging.Handler):
    """The stdlib side of ``StderrLogger``: each record to the current ``sys.stderr``, never
    raising (a third-party library's warning must not kill the thread that logged it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            line = self.format(record)
        except Exception:  # a bad %-format in a library's call: say so, do not raise
            line = f"unformattable log record from {record.name}: {record.msg!r}"
        with contextlib.suppress(OSError, ValueError):
            print(line, file=sys.stderr, flush=True)


# Third-party libraries (asyncua, pymodbus) log through the standard library; their records
# go through the same renderer as ours, at this level and above unless ours is higher.
STDLIB_LEVEL = logging.WARNING


# syslog priorities (sd-daemon(3)): what journald files a line under, from its "<N>" prefix.
PRIORITIES = {"debug": 7, "info": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
              "critical": 2}  # fmt: skip


def stderr_is_the_journal() -> bool:
    """Whether stderr is systemd's journal stream: systemd sets JOURNAL_STREAM to its
    ``device:inode`` for a service whose stderr goes to the journal (systemd.exec(5))."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):  # no real stderr (closed, a test's buffer)
        return False
    return stream == f"{st.st_dev}:{st.st_ino}"


class JournalPriority:
    """Prefixes each rendered line with its syslog priority, ``<4>{...}`` for a warning.

    journald strips the prefix and files the line under that priority (SyslogLevelPrefix=,
    on by default), so ``journalctl -u edge -p warning`` finds the warnings and errors; without
    it every line of a service is filed as info. Only on the journal's own stream: a file or a
    pipe gets the plain JSON line.
    """

    def __init__(self, renderer: structlog.typing.Processor) -> None:
        self.renderer = renderer

    def __call__(self, logger: Any, method: str, event_dict: MutableMapping[str, Any]) -> str:
        level = str(event_dict.get("level", method)).lower()
        line = self.renderer(logger, method, event_dict)
        return f"<{PRIORITIES.get(level, 6)}>{line}"


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    """structlog's lines and the standard library's (third-party libraries), rendered alike:
    one JSON object a line in json mode, on whatever ``sys.stderr`` is at the time; on the
    journal's stream each line carries its syslog priority (``JournalPriority``)."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    if use_json and stderr_is_the_journal():
        renderer = JournalPriority(renderer)
    numeric_level = logging.getLevelName(level.upper())
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
        wrapper_class=structlog.make_filtering_bound_logger(numeric_level),
        logger_factory=StderrLogger,
        cache_logger_on_first_use=False,
    )
    _route_stdlib(renderer, max(STDLIB_LEVEL, numeric_level))


def _route_stdlib(renderer: structlog.typing.Processor, level: int) -> None:
    """One handler on the root logger, replacing the one an earlier ``configure`` put there."""
    handler = _StderrHandler(level)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[
                structlog.stdlib.add_log_level,
                structlog.stdlib.add_logger_name,
                structlog.processors.TimeStamper(fmt="iso", utc=True),
            ],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.StackInfoRenderer(),
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(old)
    root.addHandler(handler)
    if root.level == logging.NOTSET or root.level > level:
        root.setLevel(level)
