"""Logs: JSON lines with camera and seq on per-frame lines, repeated errors rate-limited."""

from __future__ import annotations

import io
import json
import sys
from typing import Any

import pytest
import structlog

from edge.logs import RateLimiter, configure


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def run(limiter: RateLimiter, method: str, **event: Any) -> dict[str, Any] | None:
    try:
        return dict(limiter(None, method, dict(event)))
    except structlog.DropEvent:
        return None


def test_a_burst_passes_then_repeats_are_counted_and_reported() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=3, window_s=10.0, clock=clock)
    written = [run(limiter, "warning", event="frame rejected", camera="cam1") for _ in range(50)]
    assert sum(w is not None for w in written) == 3
    # Another camera's trouble is not hidden by cam1's.
    assert run(limiter, "warning", event="frame rejected", camera="cam2") is not None
    clock.now = 10.0
    line = run(limiter, "warning", event="frame rejected", camera="cam1")
    assert line is not None and line["suppressed"] == 47
    assert "suppressed" not in (run(limiter, "warning", event="frame rejected", camera="cam1"))


def test_info_lines_are_never_limited() -> None:
    limiter = RateLimiter(burst=1, clock=Clock())
    assert all(run(limiter, "info", event="x") is not None for _ in range(20))


def test_configured_json_lines_carry_camera_and_seq_and_are_limited(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure("json", "info")
    try:
        log = structlog.get_logger("test")
        for seq in range(40):
            log.warning("frame rejected", camera="cam9", seq=seq, reason="bad")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert 1 <= len(lines) <= 5
    assert all(line["camera"] == "cam9" and "seq" in line for line in lines)
    assert lines[0]["level"] == "warning" and lines[0]["timestamp"]
