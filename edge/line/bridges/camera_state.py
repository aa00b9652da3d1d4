"""One camera's slot: the defective latch, the counters and the heartbeat, and their rules.

Not thread-safe on its own: ``BridgeState`` (edge.line.bridges.state) holds its lock around
every call.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from edge.line.bridges.views import CameraView, Defect, DefectNotice
from edge.protocol import KIND_CAMERA_RESTART, KIND_DROP, KIND_GAP, KIND_REJECT, KIND_RESULT

# Per-class counts are kept for class ids 1..MAX_CLASSES; the class bitmask covers 1..16.
MAX_CLASSES = 8
MASK_BITS = 16


def class_mask(class_ids: Sequence[int]) -> int:
    """Bit ``class_id - 1`` set for each class id in 1..16 (others cannot be represented)."""
    mask = 0
    for class_id in class_ids:
        if 1 <= class_id <= MASK_BITS:
            mask |= 1 << (class_id - 1)
    return mask


def largest_defect(body: dict[str, Any]) -> Defect | None:
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

    def take(
        self, kind: Any, body: dict[str, Any], now: float, hold_s: float
    ) -> DefectNotice | None:
        """One event about this camera; returns a notice when it is a defective result."""
        self.expire(now, hold_s)
        self.events += 1
        self.last_event_at = now
        seq = body.get("seq")
        if kind in (KIND_RESULT, KIND_DROP, KIND_REJECT):
            self.answered += 1
            if isinstance(seq, int) and seq >= 0:
                self.last_seq = seq
        if kind == KIND_RESULT:
            return self._result(body, now)
        if kind == KIND_REJECT:
            self.rejects += 1
        elif kind == KIND_DROP:
            self.drops += 1
        elif kind == KIND_GAP:
            self.gaps += 1
            self.missing += int(body.get("missing", 0))
        elif kind == KIND_CAMERA_RESTART:
            self.restarts += 1
        return None

    def _result(self, body: dict[str, Any], now: float) -> DefectNotice | None:
        # Everything that can fail on a malformed event is read before anything changes.
        defects = body.get("defects") or []
        ids = [int(d["class_id"]) for d in defects]
        largest = largest_defect(body)
        seq = int(body["seq"]) if defects else 0
        mask = class_mask(ids)
        self.frames += 1
        shape = body.get("shape") or []
        if len(shape) > 1:
            self.frame_width_px = int(shape[1])
        self.last_mask = mask
        self.last_defective = bool(defects)
        if not defects:
            return None
        self.defective_frames += 1
        for class_id in set(ids):
            if 1 <= class_id <= MAX_CLASSES:
                self.class_counts[class_id - 1] += 1
        if not self.latched:
            self.latched = True
            self.latched_seq = seq
        self.latched_mask |= mask
        self.last_defect_at = now
        if largest is not None and (self.largest is None or largest.area_px > self.largest.area_px):
            self.largest = largest
        names = tuple(str(d.get("name", "")) for d in defects)
        return DefectNotice(
            self.camera, body["seq"], int(body.get("ts_ns", 0)), mask, names, largest
        )

    def expire(self, now: float, hold_s: float) -> None:
        """``hold_s`` > 0: the latch clears that long after the last defective frame."""
        if (
            hold_s > 0
            and self.latched
            and self.last_defect_at is not None
            and now - self.last_defect_at >= hold_s
        ):
            self.clear_latch()

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

    def view(self, slot: int, now: float, daemon_ok: bool, camera_stale_s: float) -> CameraView:
        """This slot as a PLC sees it now: camera_ok needs the daemon and a recent event."""
        camera_ok = (
            daemon_ok
            and self.last_event_at is not None
            and now - self.last_event_at <= camera_stale_s
        )
        return CameraView(
            slot=slot,
            camera=self.camera,
            events=self.events,
            last_seq=self.last_seq,
            latched=self.latched,
            latched_mask=self.latched_mask,
            latched_seq=self.latched_seq,
            last_mask=self.last_mask,
            last_defective=self.last_defective,
            largest=self.largest,
            frame_width_px=self.frame_width_px,
            frames=self.frames,
            defective_frames=self.defective_frames,
            class_counts=tuple(self.class_counts),
            rejects=self.rejects,
            drops=self.drops,
            gaps=self.gaps,
            missing=self.missing,
            restarts=self.restarts,
            events_lost=self.lost_total - self.lost_at_reset,
            camera_ok=camera_ok,
            daemon_ok=daemon_ok,
        )
