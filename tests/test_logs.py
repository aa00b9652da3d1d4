"""Logs: JSON lines with camera and seq on per-frame lines, repeated errors rate-limited."""

from __future__ import annotations

import io
import json
import os
import subprocess
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


def test_forged_camera_ids_cannot_flood_and_every_drop_is_reported() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=5, budget=20, window_s=10.0, clock=clock)
    written = [
        run(limiter, "warning", event="frame rejected", camera=f"forged{i}", seq=0)
        for i in range(3200)
    ]
    passed = [w for w in written if w is not None]
    assert len(passed) <= 5 + 20
    dropped = 3200 - len(passed)
    clock.now = 10.0
    after = [run(limiter, "warning", event="frame rejected", camera="cam1") for _ in range(3)]
    reported = sum(line.get("suppressed", 0) for line in passed + [a for a in after if a])
    assert reported == dropped
    # The report comes once: the next lines carry no count.
    assert all(a is not None and "suppressed" not in a for a in after[1:])


def test_a_cameras_suppressed_count_surfaces_even_if_that_camera_goes_quiet() -> None:
    clock = Clock()
    limiter = RateLimiter(burst=2, budget=20, window_s=10.0, clock=clock)
    for _ in range(9):
        run(limiter, "error", event="inference failed", camera="cam1")
    clock.now = 10.0
    line = run(limiter, "error", event="inference failed", camera="cam2")
    assert line is not None and line["suppressed"] == 7


@pytest.mark.parametrize("budget", [20, 10**9])
def test_the_limiters_table_stays_bounded_and_keeps_its_counts(budget: int) -> None:
    clock = Clock()
    limiter = RateLimiter(burst=5, budget=budget, window_s=10.0, clock=clock, max_keys=1000)
    passed = 0
    for i in range(100_000):
        clock.now = i * 0.001  # 100 s of ids, ten windows
        line = run(limiter, "warning", event="frame rejected", camera=f"id{i}")
        if line is not None:
            passed += 1 + line.get("suppressed", 0)
        assert limiter.table_size() <= 1000 + 2
    clock.now = 1000.0
    line = run(limiter, "warning", event="frame rejected", camera="cam1")
    assert line is not None
    assert passed + 1 + line.get("suppressed", 0) == 100_001
    # Within one window nothing expires: new ids fold into one key, still bounded and counted.
    passed = 0
    for i in range(100_000):
        line = run(limiter, "warning", event="frame rejected", camera=f"again{i}")
        passed += line is not None
    assert limiter.table_size() <= 1000 + 2
    assert passed <= min(budget, 1000 + 5)
    clock.now = 2000.0
    line = run(limiter, "warning", event="frame rejected", camera="cam1")
    assert line is not None and passed + line["suppressed"] == 100_000


def test_a_message_flood_of_distinct_texts_is_bounded_too() -> None:
    clock = Clock()
    limiter = RateLimiter(clock=clock, max_keys=100)
    for i in range(10_000):
        clock.now = i * 0.01
        run(limiter, "warning", event=f"formatted message {i}", camera="cam1")
        assert limiter.table_size() <= 2 * 100 + 2


def test_lines_without_a_camera_are_never_dropped() -> None:
    limiter = RateLimiter(burst=1, budget=1, clock=Clock())
    lines = [
        run(limiter, "error", event="reload refused; the running models keep serving", error="x")
        for _ in range(7)
    ]
    assert all(line is not None and "suppressed" not in line for line in lines)


def test_an_opted_in_line_is_limited_per_source_and_the_key_is_not_written() -> None:
    limiter = RateLimiter(burst=2, budget=20, clock=Clock())
    event = "CURVE client refused: its public key is not in curve_authorized_clients"
    lines = [run(limiter, "warning", event=event, client_key="A", throttle="A") for _ in range(5)]
    assert sum(line is not None for line in lines) == 2
    assert all("throttle" not in line for line in lines if line)
    # Another client's refusal still shows.
    other = run(limiter, "warning", event=event, client_key="B", throttle="B")
    assert other is not None and "throttle" not in other
    limited = RateLimiter(burst=1, budget=20, clock=Clock())
    assert [run(limited, "warning", event="x", throttle=True) is not None for _ in range(3)] == [
        True,
        False,
        False,
    ]
    assert "throttle" not in (run(limited, "info", event="y", throttle=True) or {})


def test_configured_reload_refusals_are_all_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    configure("json", "info")
    try:
        log = structlog.get_logger("test")
        for attempt in range(7):
            log.error("reload refused; the running models keep serving", error=f"bad {attempt}")
    finally:
        structlog.reset_defaults()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [line["error"] for line in lines] == [f"bad {attempt}" for attempt in range(7)]


JOURNAL_CHILD = """
import logging
import structlog
from edge.logs import configure
configure("json")
log = structlog.get_logger("t")
log.info("an info line")
log.warning("a warning line")
log.error("an error line")
logging.getLogger("thirdparty").warning("a library's warning")
"""


def _child_stderr(journal: str | None) -> list[str]:
    """Run JOURNAL_CHILD with stderr on a real pipe, JOURNAL_STREAM naming it (or not)."""
    read, write = os.pipe()
    st = os.fstat(write)
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    if journal == "this pipe":
        env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
    elif journal is not None:
        env["JOURNAL_STREAM"] = journal
    with os.fdopen(read) as out:
        child = subprocess.Popen([sys.executable, "-c", JOURNAL_CHILD], stderr=write, env=env)
        os.close(write)
        lines = out.read().splitlines()
    assert child.wait(30) == 0
    return lines


def test_on_the_journals_stream_each_json_line_carries_its_syslog_priority() -> None:
    lines = _child_stderr("this pipe")
    assert [line[:3] for line in lines] == ["<6>", "<4>", "<3>", "<4>"]
    bodies = [json.loads(line[3:]) for line in lines]
    assert [b["event"] for b in bodies] == [
        "an info line", "a warning line", "an error line", "a library's warning"
    ]  # fmt: skip


@pytest.mark.parametrize("journal", [None, "1:2"])
def test_a_pipe_or_file_that_is_not_the_journal_gets_plain_json(journal: str | None) -> None:
    lines = _child_stderr(journal)
    assert len(lines) == 4 and all(json.loads(line)["level"] for line in lines)
