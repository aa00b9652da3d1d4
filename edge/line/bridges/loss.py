"""The loss check: events the daemon says it published that never reached this bridge.

Not thread-safe on its own: ``BridgeState`` (edge.line.bridges.state) calls it under its lock.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

from edge.line.bridges.camera_state import CameraState

# Events the daemon counted in a status message must have reached the bridge this many seconds
# (of daemon uptime) later; what is still missing then was lost on the way (see LossCheck).
LOSS_LAG_S = 3.0


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

    def check(self, status: dict[str, Any], slots: Sequence[CameraState]) -> None:
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
