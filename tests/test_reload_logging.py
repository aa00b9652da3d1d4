"""Every reload outcome is logged: a real daemon refusing 7 reloads in a row writes 7 lines."""

from __future__ import annotations

import json
import queue
import shutil
import signal
import time
from pathlib import Path

from tests.daemon_process import DaemonProcess
from tests.test_reload import break_model

REFUSED = "reload refused; the running models keep serving"


def _next_json(daemon: DaemonProcess, timeout_s: float) -> dict:
    """The next JSON log line on the daemon's stderr."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "no such log line in time; stderr so far:\n" + daemon.stderr
        try:
            line = daemon.stderr_queue.get(timeout=left)
        except queue.Empty:
            continue
        assert line is not None, "the daemon exited; stderr:\n" + daemon.stderr
        if line.startswith("{"):
            return json.loads(line)


def _wait_for(daemon: DaemonProcess, event: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        line = _next_json(daemon, deadline - time.monotonic())
        if line["event"] == event:
            return line


def test_seven_refused_reloads_within_seconds_are_all_logged(
    tiny_repo: Path, tmp_path: Path
) -> None:
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "models"))
    refused: list[dict] = []
    with DaemonProcess(repo, "--pid-file", str(tmp_path / "edge.pid")) as daemon:
        _wait_for(daemon, "daemon ready")
        break_model(repo, "segmenter")
        started = time.monotonic()
        for _ in range(7):
            # One at a time: a SIGHUP that arrives during a reload is folded into one more.
            daemon.send_signal(signal.SIGHUP)
            refused.append(_wait_for(daemon, REFUSED))
        elapsed = time.monotonic() - started
        daemon.terminate()
        assert daemon.wait(60) == 0, daemon.stderr
    assert len(refused) == 7
    assert all(line["level"] == "error" and "segmenter" in line["error"] for line in refused)
    assert all("suppressed" not in line for line in refused)
    # Within one rate-limit window, or the test would not show the limiter leaves these alone.
    assert elapsed < 10, f"7 refusals took {elapsed:.1f} s"
