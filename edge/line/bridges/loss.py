"""The loss check: events the daemon says it published that never reached this bridge.

Not thread-safe on its own: ``BridgeState`` (edge.line.bridges.state) calls it under its lock;
``TransitLoss`` runs on the subscriber's one thread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from edge.line.bridges.camera_state import CameraState

# Events the daemon counted in a status message must have reached the bridge this many seconds
# (of daemon uptime) later; what is still missing then was lost on the way (see LossCheck).
LOSS_LAG_S = 3.0
# One of these per frame the daemon received: what a status message counts.
PER_FRAME_KINDS = ("result", "reject", "drop")


class LossCheck:
    """Compare what the daemon says it published with what arrived here, per camera.

    A status message carries, per camera, the results, rejects and drops the daemon has
    counted, and every one of those events is published after it is counted. So events
    counted between the first status this bridge saw (the anchor) and the status LOSS_LAG_S
    seconds ago must all have arrived by now, behind the anchor on the same connection; any
    shortfall was lost on the way (a subscriber queue overflowing, say). Without this a PLC
    could miss a defect without any sign.
    """

    def __init__(self) -> None:
        # (uptime_s, events counted per camera, events arrived per camera) per status message
        self._points: deque[tuple[float, dict[str, int], dict[str, int]]] = deque()
        self._anchor: tuple[float, dict[str, int], dict[str, int]] = (0.0, {}, {})
        self._daemon = ""

    def check(self, status: dict[str, Any], slots: Sequence[CameraState | _Arrived]) -> None:
        """Take one status message; raise each camera's ``lost_total`` to what is missing."""
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
        history = self._points
        if history and (uptime < history[-1][0] or daemon != self._daemon):
            history.clear()  # the daemon restarted: its counters started again from zero
        self._daemon = daemon
        answered = {cam.camera: cam.answered for cam in slots}
        if not history:
            self._anchor = (float(uptime), counted, answered)
        history.append((float(uptime), counted, answered))
        # Keep the newest point at least LOSS_LAG_S old, and everything after it.
        while len(history) >= 2 and history[1][0] <= uptime - LOSS_LAG_S:
            history.popleft()
        then_uptime, then_counted, _ = history[0]
        if uptime - then_uptime < LOSS_LAG_S:
            return
        _, anchor_counted, anchor_answered = self._anchor
        for cam in slots:
            expected = then_counted.get(cam.camera, 0) - anchor_counted.get(cam.camera, 0)
            arrived = cam.answered - anchor_answered.get(cam.camera, 0)
            cam.lost_total = max(cam.lost_total, expected - arrived)


@dataclass
class _Arrived:
    """What LossCheck reads of a camera: the per-frame events that arrived, and its finding."""

    camera: str
    answered: int = 0
    lost_total: int = 0


class TransitLoss:
    """LossCheck for any subscriber: the events lost on the way from the daemon, in total.

    The subscriber core feeds it every message; a sink that can say what it lost (MQTT's
    dropped totals, the store's ``store_losses``) is told of each new shortfall. Cameras are
    tracked up to ``max_cameras`` (the daemon's own table is 64 by default and counts the rest
    under one name), so forged ids cannot grow it.
    """

    def __init__(self, max_cameras: int = 4 * 64) -> None:
        self._check = LossCheck()
        self._cameras: dict[str, _Arrived] = {}
        self._max_cameras = max_cameras
        self.lost = 0  # events found lost so far, all cameras

    def take(self, body: dict[str, Any]) -> int:
        """One parsed message; how many more events are now known lost (0 mostly)."""
        kind = body.get("kind")
        if kind in PER_FRAME_KINDS:
            camera = body.get("camera")
            if not isinstance(camera, str):
                return 0
            arrived = self._cameras.get(camera)
            if arrived is None:
                if len(self._cameras) >= self._max_cameras:
                    return 0
                arrived = self._cameras[camera] = _Arrived(camera)
            arrived.answered += 1
            return 0
        if kind != "status":
            return 0
        self._check.check(body, list(self._cameras.values()))
        total = sum(c.lost_total for c in self._cameras.values())
        found, self.lost = total - self.lost, max(self.lost, total)
        return max(0, found)
