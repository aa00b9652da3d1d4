"""Per-camera bookkeeping, so no frame is lost without a trace.

Counts what happened to every frame (received = results + rejects + drops, once the daemon has
drained) and follows each camera's ``seq`` to report runs it never received (gaps) and restarts.
It also knows which received frames still wait for their event, so the last seq whose event
left can be kept across a crash (``edge.daemon.seqstate``): a restarted daemon reports what fell
between as a gap instead of starting a new baseline.

The camera table is bounded (``max_cameras``): forged ids cannot grow the counters, the status
message or the state file. Ids beyond it are refused; their frames are counted under
``OVERFLOW``. Updated from the receiver and the publisher threads, hence the lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

from edge import protocol

COUNTERS = ("received", "results", "rejects", "drops", "gaps", "missing", "restarts")
# The label that frames from camera ids past the table are counted under. Not a valid
# camera id can be told apart from a real one named so, hence the brackets.
OVERFLOW = "(other)"


class Ledger:
    def __init__(self, max_cameras: int = 64, last_seqs: dict[str, int] | None = None) -> None:
        """``last_seqs``: each camera's last seq whose event left, from before a restart."""
        self._lock = threading.Lock()
        self.max_cameras = max_cameras
        self._counts: dict[str, dict[str, int]] = {}
        self._last_seq: dict[str, int] = {}
        # Received, with a readable seq, whose event has not been published yet.
        self._pending: dict[str, Counter[int]] = {}
        # Cameras whose baseline came from the state file: their first gap spans a restart.
        self._restored: set[str] = set()
        for camera, seq in list((last_seqs or {}).items())[:max_cameras]:
            self._table(camera)
            self._last_seq[camera] = seq
            self._restored.add(camera)

    def _table(self, camera: str) -> dict[str, int] | None:
        """The camera's counters; a new camera gets a slot while there is room (lock held)."""
        counts = self._counts.get(camera)
        if counts is None and (self._cameras() < self.max_cameras or _untabled(camera)):
            counts = self._counts[camera] = dict.fromkeys(COUNTERS, 0)
        return counts

    def _cameras(self) -> int:
        return sum(1 for camera in self._counts if not _untabled(camera))

    def admit(self, camera: str) -> bool:
        """Whether ``camera`` has (or now gets) a place in the table."""
        with self._lock:
            return self._table(camera) is not None

    def count(self, camera: str, counter: str, n: int = 1) -> None:
        with self._lock:
            counts = self._table(camera)
            if counts is None:
                counts = self._counts.setdefault(OVERFLOW, dict.fromkeys(COUNTERS, 0))
            counts[counter] += n

    def observe_seq(self, camera: str, seq: int) -> list[dict[str, Any]]:
        """Gap and restart events that receiving ``seq`` from ``camera`` reveals.

        The frame is then pending until ``settle`` says its event left.
        """
        with self._lock:
            counts = self._table(camera)
            if counts is None:
                return []
            self._pending.setdefault(camera, Counter())[seq] += 1
            last = self._last_seq.get(camera)
            self._last_seq[camera] = seq
            across_restart = camera in self._restored
            self._restored.discard(camera)
            if last is None or seq == last + 1:
                return []
            if seq > last + 1:
                counts["gaps"] += 1
                counts["missing"] += seq - last - 1
                gap = protocol.gap_event(camera, last + 1, seq - 1)
                if across_restart:
                    gap["across_restart"] = True
                return [gap]
            # Backwards (or repeated): the camera restarted its count. Not a gap.
            counts["restarts"] += 1
            return [protocol.camera_restart_event(camera, last, seq)]

    def settle(self, camera: str, seq: int) -> None:
        """The event of frame ``seq`` of ``camera`` was published."""
        with self._lock:
            pending = self._pending.get(camera)
            if pending is None or seq not in pending:
                return
            pending[seq] -= 1
            if pending[seq] <= 0:
                del pending[seq]

    def settled_seqs(self) -> dict[str, int]:
        """Per camera, a seq up to which every frame received got its event published."""
        with self._lock:
            seqs = {}
            for camera, last in self._last_seq.items():
                pending = self._pending.get(camera)
                seqs[camera] = min(pending) - 1 if pending else last
            return seqs

    def snapshot(self) -> dict[str, dict[str, int]]:
        with self._lock:
            return {camera: dict(counts) for camera, counts in self._counts.items()}


def _untabled(camera: str) -> bool:
    """Labels that take no place in the table: they are bounded by construction."""
    return camera in (protocol.UNKNOWN_CAMERA, OVERFLOW)
