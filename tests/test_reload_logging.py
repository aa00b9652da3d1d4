"""Every reload outcome is logged: a real daemon refusing 7 reloads in a row writes 7 lines."""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.conftest import free_port
from tests.test_reload import break_model

REFUSED = "reload refused; the running models keep serving"


def _read_lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line)
    into.put(None)


def _next_json(lines: queue.Queue[str | None], seen: list[str], timeout_s: float) -> dict:
    """The next JSON log line; every line read is kept in ``seen`` for failure messages."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no such log line in time; stderr so far:\n" + "".join(seen)
        try:
            line = lines.get(timeout=left)
        except queue.Empty:
            continue
        assert line is not None, "the daemon exited; stderr:\n" + "".join(seen)
        seen.append(line)
        if line.startswith("{"):
            return json.loads(line)


def _wait_for(lines: queue.Queue[str | None], seen: list[str], event: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        line = _next_json(lines, seen, deadline - time.monotonic())
        if line["event"] == event:
            return line


def test_seven_refused_reloads_within_seconds_are_all_logged(
    tiny_repo: Path, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "models"))
    pid_file = tmp_path / "edge.pid"
    daemon = subprocess.Popen(
        [sys.executable, "-m", "edge.cli.main", "run",
         "--bind-source", f"tcp://127.0.0.1:{free_port()}",
         "--publish", f"tcp://127.0.0.1:{free_port()}",
         "--models", str(repo), "--threads", "1", "--log-format", "json",
         "--pid-file", str(pid_file)],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    reader = threading.Thread(target=_read_lines, args=(daemon.stderr, lines), daemon=True)
    reader.start()
    seen: list[str] = []
    refused: list[dict] = []
    try:
        _wait_for(lines, seen, "daemon ready")
        break_model(repo, "segmenter")
        started = time.monotonic()
        for _ in range(7):
            # One at a time: a SIGHUP that arrives during a reload is folded into one more.
            daemon.send_signal(signal.SIGHUP)
            refused.append(_wait_for(lines, seen, REFUSED))
        elapsed = time.monotonic() - started
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0, "".join(seen)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    reader.join(10)
    assert len(refused) == 7
    assert all(line["level"] == "error" and "segmenter" in line["error"] for line in refused)
    assert all("suppressed" not in line for line in refused)
    # Within one rate-limit window, or the test would not show the limiter leaves these alone.
    assert elapsed < 10, f"7 refusals took {elapsed:.1f} s"
