"""What a PLC bridge knows about the line: per-camera state fed by the daemon's events.

Pure and socket-free so the latch, counter and health rules are tested on their own. The
subscriber thread calls ``apply``; the Modbus and OPC UA servers call ``snapshot`` (and ``ack``
/ ``reset``). One lock guards everything and is held for microseconds, so a slow PLC can never
hold up the subscriber, nor the subscriber a PLC.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.protocol import (
    KIND_CAMERA_RESTART,
    KIND_DROP,
    KIND_GAP,
    KIND_REJECT,
    KIND_RESULT,
    KIND_STATUS,
    STATUS_TOPIC_PREFIX,
    UNKNOWN_CAMERA,
)

# Per-class counts are kept for class ids 1..MAX_CLASSES; the class bitmask covers 1..16.
MAX_CLASSES = 8
MASK_BITS = 16
# Events the daemon counted in a status message must have reached the bridge this many seconds
# (of daemon uptime) later; what is still missing then was lost on the way (see _check_loss).
LOSS_LAG_S = 3.0


def class_mask(class_ids: Sequence[int]) -> int:
    """Bit ``class_id - 1`` set for each class id in 1..16 (others cannot be represented)."""
    mask = 0
    for class_id in class_ids:
        if 1 <= class_id <= MASK_BITS:
            mask |= 1 << (class_id - 1)
    return mask


@dataclass(frozen=True, slots=True)
class Defect:
    """The largest single defect (8-connected component) seen, and where it lies on the strip."""

    area_px: int
    class_id: int
    name: str
    x_px: int  # centre column of its bounding box
    width_px: int  # bounding-box width
    frame_width_px: int
    seq: int


@dataclass(frozen=True, slots=True)
class DefectNotice:
    """One defective frame, as the OPC UA bridge turns it into an OPC UA event."""

    camera: str
    seq: int
    ts_ns: int
    class_mask: int
    names: tuple[str, ...]
    largest: Defect | None


@dataclass(slots=True)
class CameraState:
    camera: str
    events: int = 0  # every event about this camera: the per-camera heartbeat
    last_seq: int | None = None
    last_event_at: float | None = None
    latched: bool = False
    latched_mask: int = 0
    latched_seq: int | None = None
    last_defect_at: float | None = None
    last_mask: int = 0
    last_defective: bool = False
    largest: Defect | None = None
    frame_width_px: int = 0
    frames: int = 0
    defective_frames: int = 0
    class_counts: list[int] = field(default_factory=lambda: [0] * MAX_CLASSES)
    rejects: int = 0
    drops: int = 0
    gaps: int = 0
    missing: int = 0
    restarts: int = 0
    answered: int = 0  # result, reject and drop events received: one per frame the daemon got
    lost_total: int = 0  # events the daemon published that never arrived (since start)
    lost_at_reset: int = 0

    def clear_latch(self) -> None:
        self.latched = False
        self.latched_mask = 0
        self.latched_seq = None
        self.largest = None

    def reset_counts(self) -> None:
        self.frames = self.defective_frames = 0
        self.class_counts = [0] * MAX_CLASSES
        self.rejects = self.drops = self.gaps = self.missing = self.restarts = 0
        self.lost_at_reset = self.lost_total


@dataclass(frozen=True, slots=True)
class CameraView:
    """One camera slot as a PLC sees it at one instant (health flags already evaluated)."""

    slot: int
    camera: str  # "" for a slot not yet taken
    events: int
    last_seq: int | None
    latched: bool
    latched_mask: int
    latched_seq: int | None
    last_mask: int
    last_defective: bool
    largest: Defect | None
    frame_width_px: int
    frames: int
    defective_frames: int
    class_counts: tuple[int, ...]
    rejects: int
    drops: int
    gaps: int
    missing: int
    restarts: int
    events_lost: int
    camera_ok: bool
    daemon_ok: bool


@dataclass(frozen=True, slots=True)
class BridgeView:
    uptime_s: float
    daemon_ok: bool
    status_age_s: float | None  # None: no status ever received
    status_count: int
    daemon: str
    ignored_events: int
    invalid_messages: int
    cameras: tuple[CameraView, ...]  # one per slot, max_cameras long

    @property
    def any_latched(self) -> bool:
        return any(c.latched for c in self.cameras)


def _largest_defect(body: dict[str, Any]) -> Defect | None:
    """The biggest component over all classes of a result (components are largest first)."""
    shape = body.get("shape") or [0, 0]
    width = int(shape[1]) if len(shape) > 1 else 0
    best: Defect | None = None
    for d in body.get("defects", []):
        components = d.get("components") or []
        if components:
            x, _y, w, _h = components[0]["bbox"]
            area, x_px, w_px = int(components[0]["area_px"]), int(x + w // 2), int(w)
        else:  # a daemon without components: the whole mask, position unknown
            area, x_px, w_px = int(d.get("area_px", 0)), 0, 0
        if best is None or area > best.area_px:
            best = Defect(
                area,
                int(d["class_id"]),
                str(d.get("name", "")),
                x_px,
                w_px,
                width,
                int(body["seq"]),
            )
    return best


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
        # (uptime_s, events counted per camera, events arrived per camera) per status message
        self._loss_points: deque[tuple[float, dict[str, int], dict[str, int]]] = deque()
        self._loss_anchor: tuple[float, dict[str, int], dict[str, int]] = (0.0, {}, {})
        self._loss_daemon = ""

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
                self._check_loss(body)
                return None
            cam = self._camera(body.get("camera"))
            if cam is None:
                self._ignored += 1
                return None
            self._expire(cam, now)
            cam.events += 1
            cam.last_event_at = now
            seq = body.get("seq")
            if kind in (KIND_RESULT, KIND_DROP, KIND_REJECT):
                cam.answered += 1
                if isinstance(seq, int) and seq >= 0:
                    cam.last_seq = seq
            if kind == KIND_RESULT:
                return self._result(cam, body, now)
            if kind == KIND_REJECT:
                cam.rejects += 1
            elif kind == KIND_DROP:
                cam.drops += 1
            elif kind == KIND_GAP:
                cam.gaps += 1
                cam.missing += int(body.get("missing", 0))
            elif kind == KIND_CAMERA_RESTART:
                cam.restarts += 1
            return None

    def _check_loss(self, status: dict[str, Any]) -> None:
        """Compare what the daemon says it published with what arrived here, per camera.

        A status message carries, per camera, the results, rejects and drops the daemon has
        counted, and every one of those events is published after it is counted. So events
        counted between the first status this bridge saw (the anchor) and the status LOSS_LAG_S
        seconds ago must all have arrived by now, behind the anchor on the same connection; any
        shortfall was lost on the way (a subscriber queue overflowing, say). Without this a PLC
        could miss a defect without any sign.
        """
        cameras, uptime = status.get("cameras"), status.get("uptime_s")
        if not isinstance(cameras, dict) or not isinstance(uptime, int | float):
            return
        try:
            counted = {
                str(name): int(c.get("results", 0))
                + int(c.get("rejects", 0))
                + int(c.get("drops", 0))
                for name, c in cameras.items()
                if isinstance(c, dict)
            }
        except (TypeError, ValueError):
            return
        daemon = str(status.get("daemon", ""))
        history = self._loss_points
        if history and (uptime < history[-1][0] or daemon != self._loss_daemon):
            history.clear()  # the daemon restarted: its counters started again from zero
        self._loss_daemon = daemon
        answered = {cam.camera: cam.answered for cam in self._slots}
        if not history:
            self._loss_anchor = (float(uptime), counted, answered)
        history.append((float(uptime), counted, answered))
        # Keep the newest point at least LOSS_LAG_S old, and everything after it.
        while len(history) >= 2 and history[1][0] <= uptime - LOSS_LAG_S:
            history.popleft()
        then_uptime, then_counted, _ = history[0]
        if uptime - then_uptime < LOSS_LAG_S:
            return
        _, anchor_counted, anchor_answered = self._loss_anchor
        for cam in self._slots:
            expected = then_counted.get(cam.camera, 0) - anchor_counted.get(cam.camera, 0)
            arrived = cam.answered - anchor_answered.get(cam.camera, 0)
            cam.lost_total = max(cam.lost_total, expected - arrived)

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

    def _result(self, cam: CameraState, body: dict[str, Any], now: float) -> DefectNotice | None:
        # Everything that can fail on a malformed event is read before anything changes.
        defects = body.get("defects") or []
        ids = [int(d["class_id"]) for d in defects]
        largest = _largest_defect(body)
        seq = int(body["seq"]) if defects else 0
        mask = class_mask(ids)
        cam.frames += 1
        shape = body.get("shape") or []
        if len(shape) > 1:
            cam.frame_width_px = int(shape[1])
        cam.last_mask = mask
        cam.last_defective = bool(defects)
        if not defects:
            return None
        cam.defective_frames += 1
        for class_id in set(ids):
            if 1 <= class_id <= MAX_CLASSES:
                cam.class_counts[class_id - 1] += 1
        if not cam.latched:
            cam.latched = True
            cam.latched_seq = seq
        cam.latched_mask |= mask
        cam.last_defect_at = now
        if largest is not None and (cam.largest is None or largest.area_px > cam.largest.area_px):
            cam.largest = largest
        names = tuple(str(d.get("name", "")) for d in defects)
        return DefectNotice(
            cam.camera, body["seq"], int(body.get("ts_ns", 0)), mask, names, largest
        )

    def _expire(self, cam: CameraState, now: float) -> None:
        if (
            self.hold_s > 0
            and cam.latched
            and cam.last_defect_at is not None
            and now - cam.last_defect_at >= self.hold_s
        ):
            cam.clear_latch()

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
                    self._expire(cam, now)
                    views.append(self._view(slot, cam, now, daemon_ok))
                else:
                    views.append(self._view(slot, CameraState(""), now, daemon_ok))
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

    def _view(self, slot: int, cam: CameraState, now: float, daemon_ok: bool) -> CameraView:
        camera_ok = (
            daemon_ok
            and cam.last_event_at is not None
            and now - cam.last_event_at <= self.camera_stale_s
        )
        return CameraView(
            slot=slot,
            camera=cam.camera,
            events=cam.events,
            last_seq=cam.last_seq,
            latched=cam.latched,
            latched_mask=cam.latched_mask,
            latched_seq=cam.latched_seq,
            last_mask=cam.last_mask,
            last_defective=cam.last_defective,
            largest=cam.largest,
            frame_width_px=cam.frame_width_px,
            frames=cam.frames,
            defective_frames=cam.defective_frames,
            class_counts=tuple(cam.class_counts),
            rejects=cam.rejects,
            drops=cam.drops,
            gaps=cam.gaps,
            missing=cam.missing,
            restarts=cam.restarts,
            events_lost=cam.lost_total - cam.lost_at_reset,
            camera_ok=camera_ok,
            daemon_ok=daemon_ok,
        )
