"""What a bridge hands out: immutable snapshots for the PLC servers, notices for OPC UA events.

Frozen, so a server can read a snapshot at leisure while the subscriber goes on changing the
state it was taken from.
"""

from __future__ import annotations

from dataclasses import dataclass


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
