"""What a PLC bridge knows about the line: per-camera state fed by the daemon's events.

Pure and socket-free so the latch, counter and health rules are tested on their own. The
subscriber thread calls ``apply``; the Modbus and OPC UA servers call ``snapshot`` (and ``ack``
/ ``reset``). One lock guards everything and is held for microseconds, so a slow PLC can never
hold up the subscriber, nor the subscriber a PLC.

Here: the slots, the daemon's health and the lock. One camera's latch and counters are in
``camera_state``, the check for lost events in ``loss``, the snapshot types in ``views``; their
public names are importable from here too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from edge.line.bridges.camera_state import MASK_BITS, MAX_CLASSES, CameraState, class_mask
from edge.line.bridges.loss import LOSS_LAG_S, LossCheck
from edge.line.bridges.views import BridgeView, CameraView, Defect, DefectNotice
from edge.protocol import KIND_STATUS, STATUS_TOPIC_PREFIX, UNKNOWN_CAMERA

__all__ = [
    "LOSS_LAG_S",
    "MASK_BITS",
    "MAX_CLASSES",
    "BridgeState",
    "BridgeView",
    "CameraState",
    "CameraView",
    "Defect",
    "DefectNotice",
    "class_mask",
]


class BridgeState:
    """Per-camera state from the daemon's events; thread-safe.

    ``cameras``: fixed slots (slot i is cameras[i]); events of other cameras are ignored. Empty:
    slots are taken in the order cameras are first seen, up to ``max_cameras``.
    ``hold_s``: 0 keeps the defective latch until acknowledged; > 0 also clears it that long
    after the last defective frame. ``stale_s``: no status message for this long means the
    daemon is unhealthy; ``camera_stale_s``: no event about a camera for this long means that
    camera is not being inspected.
    """

    def __init__(
        self,
        cameras: Sequence[str] = (),
        *,
        max_cameras: int = 16,
        hold_s: float = 0.0,
        stale_s: float = 3.0,
        camera_stale_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if len(cameras) > max_cameras:
            raise ValueError(f"{len(cameras)} cameras given but max_cameras is {max_cameras}")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"cameras must be unique, got {list(cameras)}")
        self.fixed = bool(cameras)
        self.max_cameras = max_cameras
        self.hold_s = hold_s
        self.stale_s = stale_s
        self.camera_stale_s = camera_stale_s
        self._clock = clock
        self._lock = threading.Lock()
        self._started = clock()
        self._slots: list[CameraState] = [CameraState(c) for c in cameras]
        self._by_name = {c.camera: c for c in self._slots}
        self._last_status_at: float | None = None
        self._status_count = 0
        self._daemon = ""
        self._ignored = 0
        self._invalid = 0
        self._loss = LossCheck()

    # -- fed by the subscriber --

    def apply(self, topic: str, body: dict[str, Any]) -> DefectNotice | None:
        """Take one parsed daemon message; returns a notice when it is a defective result."""
        kind = body.get("kind")
        with self._lock:
            now = self._clock()
            if topic.startswith(STATUS_TOPIC_PREFIX) and kind != KIND_STATUS:
                return None  # about the daemon's inputs (source_lost, ...): no camera's state
            if topic.startswith(STATUS_TOPIC_PREFIX) or kind == KIND_STATUS:
                self._last_status_at = now
                self._status_count += 1
                self._daemon = str(body.get("daemon", ""))
                self._loss.check(body, self._slots)
                return None
            cam = self._camera(body.get("camera"))
            if cam is None:
                self._ignored += 1
                return None
            return cam.take(kind, body, now, self.hold_s)

    def invalid_message(self) -> None:
        """A message on the daemon's socket that is not a v1 event (counted, never fatal)."""
        with self._lock:
            self._invalid += 1

    def _camera(self, name: Any) -> CameraState | None:
        if not isinstance(name, str) or not name:
            return None
        cam = self._by_name.get(name)
        if cam is not None or self.fixed or name == UNKNOWN_CAMERA:
            return cam
        if len(self._slots) >= self.max_cameras:
            return None
        cam = CameraState(name)
        self._slots.append(cam)
        self._by_name[name] = cam
        return cam

    # -- driven by the PLC --

    def ack(self, slot: int | None = None) -> None:
        """Clear the defective latch of one slot (None: every slot)."""
        with self._lock:
            for cam in self._select(slot):
                cam.clear_latch()

    def reset(self, slot: int | None = None) -> None:
        """Zero the counters of one slot (None: every slot); the latch is left alone."""
        with self._lock:
            for cam in self._select(slot):
                cam.reset_counts()

    def _select(self, slot: int | None) -> list[CameraState]:
        if slot is None:
            return list(self._slots)
        return [self._slots[slot]] if 0 <= slot < len(self._slots) else []

    def slot_of(self, camera: str) -> int | None:
        with self._lock:
            cam = self._by_name.get(camera)
            return None if cam is None else self._slots.index(cam)

    def snapshot(self) -> BridgeView:
        with self._lock:
            now = self._clock()
            age = None if self._last_status_at is None else now - self._last_status_at
            daemon_ok = age is not None and age <= self.stale_s
            views = []
            for slot in range(self.max_cameras):
                if slot < len(self._slots):
                    cam = self._slots[slot]
                    cam.expire(now, self.hold_s)
                else:
                    cam = CameraState("")
                views.append(cam.view(slot, now, daemon_ok, self.camera_stale_s))
            return BridgeView(
                uptime_s=now - self._started,
                daemon_ok=daemon_ok,
                status_age_s=age,
                status_count=self._status_count,
                daemon=self._daemon,
                ignored_events=self._ignored,
                invalid_messages=self._invalid,
                cameras=tuple(views),
            )
