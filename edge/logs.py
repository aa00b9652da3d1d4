"""structlog set-up: JSON lines for journald and files, readable colours on a terminal."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import Literal

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


def configure(fmt: LogFormat = "auto", level: str = "info") -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=StderrLogger,
        cache_logger_on_first_use=False,
    )
