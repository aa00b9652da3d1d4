"""Per-camera bookkeeping, so no frame is lost without a trace.

Counts what happened to every frame (received = results + rejects + drops, once the daemon has
drained) and follows each camera's ``seq`` to report runs it never received (gaps) and restarts.
Updated from the receiver and the publisher threads, hence the lock.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from typing import Any

from edge import protocol

COUNTERS = ("received", "results", "rejects", "drops", "gaps", "missing", "restarts")


class Ledger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))
        self._last_seq: dict[str, int] = {}

    def count(self, camera: str, counter: str, n: int = 1) -> None:
        with self._lock:
            self._counts[camera][counter] += n

    def observe_seq(self, camera: str, seq: int) -> list[dict[str, Any]]:
        """Gap and restart events that receiving ``seq`` from ``camera`` reveals."""
        with self._lock:
            last = self._last_seq.get(camera)
            self._last_seq[camera] = seq
            if last is None or seq == last + 1:
                return []
            counts = self._counts[camera]
            if seq > last + 1:
                counts["gaps"] += 1
                counts["missing"] += seq - last - 1
                return [protocol.gap_event(camera, last + 1, seq - 1)]
            # Backwards (or repeated): the camera restarted its count. Not a gap.
            counts["restarts"] += 1
            return [protocol.camera_restart_event(camera, last, seq)]

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {camera: dict(counts) for camera, counts in self._counts.items()}
