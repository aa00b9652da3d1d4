"""What the operator view shows, kept bounded: the last strips per camera, the coil map's
latest defects, counts per class, rates of rejects/drops/gaps, and what is wrong.

The subscriber threads write here (``ViewSink`` for the daemon's events, the frame subscriber
for the cameras' pixels); the web server reads snapshots. Every collection has a fixed
bound, so a view left open for months, or fed forged camera ids, stays the same size.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np

from edge.line.store.records import union_bbox
from edge.protocol.linemeta import read_place
from edge.tools.view.render import mask_contours, strip_jpeg

STRIPS_PER_CAMERA: Final = 6
MAX_CAMERAS: Final = 16
FRAMES_PER_CAMERA: Final = 16  # pixels waiting for their result (the daemon's latency)
COIL_POINTS: Final = 2000
RATE_WINDOW_S: Final = 60.0
STATUS_STALE_S: Final = 5.0
# The largest strip the view draws (4 Severstal strips): a result claiming more gets its
# numbers shown but no outlines, as decoding its masks would allocate what the claim says.
VIEW_MAX_PIXELS: Final = 4 * 256 * 1600
# An operator cannot watch a line's ~156 strips/s per camera, and drawing one (its JPEG, its
# outlines) costs milliseconds (tens for a noisy strip of 4 classes): a camera's strips are drawn
# at most this often, a defective one sooner, and only frames that could be drawn are decoded
# and kept. Every strip is counted and on the coil map.
DRAW_EVERY_S: Final = 0.5
DRAW_DEFECTIVE_EVERY_S: Final = 0.1
OTHER: Final = "(other)"


@dataclass(frozen=True)
class StripView:
    """One answered strip as the page draws it (``image`` only when the frame was seen)."""

    camera: str
    seq: int
    width: int
    height: int
    defects: list[dict[str, Any]]
    image: bytes | None
    received: float

    def summary(self) -> dict[str, Any]:
        return {
            "camera": self.camera,
            "seq": self.seq,
            "width": self.width,
            "height": self.height,
            "defective": bool(self.defects),
            "defects": self.defects,
            "image": f"/strip/{self.camera}/{self.seq}.jpg" if self.image else None,
        }


@dataclass
class _Rates:
    """Events of one kind in the last RATE_WINDOW_S, in per-second buckets (bounded)."""

    buckets: deque[list[float]] = field(default_factory=lambda: deque(maxlen=int(RATE_WINDOW_S)))

    def add(self, now: float, n: int = 1) -> None:
        second = float(int(now))
        if self.buckets and self.buckets[-1][0] == second:
            self.buckets[-1][1] += n
        else:
            self.buckets.append([second, float(n)])

    def per_minute(self, now: float) -> float:
        return sum(n for t, n in self.buckets if now - t < RATE_WINDOW_S) * 60.0 / RATE_WINDOW_S


class ViewState:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self.strips: OrderedDict[str, deque[StripView]] = OrderedDict()
        self._frames: dict[str, OrderedDict[int, np.ndarray]] = {}
        self.coil: deque[dict[str, Any]] = deque(maxlen=COIL_POINTS)
        self.class_counts: dict[str, dict[str, float]] = {}
        self.totals = {"results": 0, "defective": 0, "rejects": 0, "drops": 0, "missing": 0}
        self.invalid = 0
        self._rates = {kind: _Rates() for kind in ("rejects", "drops", "missing")}
        self._drawn_at: dict[str, float] = {}  # camera (bounded as strips are) -> last drawn
        self.last_status: float | None = None
        self.daemon: str | None = None
        self.sources_lost: dict[str, float] = {}
        self.cameras_lost: set[str] = set()
        self._listeners: list[Callable[[dict[str, Any]], None]] = []

    # -- writers -------------------------------------------------------------------------------

    def listen(self, listener: Callable[[dict[str, Any]], None]) -> None:
        """``listener(message)`` for each new strip; called on the writing thread, must not block."""
        self._listeners.append(listener)

    def _camera(self, camera: str) -> str:
        if camera in self.strips or len(self.strips) < MAX_CAMERAS:
            return camera
        return OTHER

    def frame(self, camera: str, seq: int, pixels: np.ndarray) -> None:
        """A camera's frame, kept until its result comes (the oldest go first)."""
        with self._lock:
            if camera not in self._frames and len(self._frames) >= MAX_CAMERAS:
                return  # a camera past the table: its strips show without pixels
            frames = self._frames.setdefault(camera, OrderedDict())
            frames[seq] = pixels
            while len(frames) > FRAMES_PER_CAMERA:
                frames.popitem(last=False)

    def frame_due(self, camera: str) -> bool:
        """Whether a frame of ``camera`` is worth decoding and keeping now: its strip could be
        drawn (DRAW_DEFECTIVE_EVERY_S since the last drawn; see DRAW_EVERY_S)."""
        with self._lock:
            last = self._drawn_at.get(self._camera(camera))
        return last is None or self._clock() - last >= DRAW_DEFECTIVE_EVERY_S

    def _due(self, camera: str, defective: bool) -> bool:
        now = self._clock()
        with self._lock:
            key = self._camera(camera)
            last = self._drawn_at.get(key)
            due = last is None or now - last >= (
                DRAW_DEFECTIVE_EVERY_S if defective else DRAW_EVERY_S
            )
            if due:
                self._drawn_at[key] = now
            return due

    def result(self, body: dict[str, Any]) -> None:
        camera, seq = str(body["camera"]), int(body["seq"])
        height, width = (int(v) for v in body["shape"][:2])
        draw = self._due(camera, bool(body["defects"]))
        defects = [self._defect_view(d, height, width, draw) for d in body["defects"]]
        pixels = None
        if draw:
            with self._lock:
                pixels = self._frames.get(camera, {}).pop(seq, None)
        image = strip_jpeg(pixels) if pixels is not None else None
        strip = StripView(camera, seq, width, height, defects, image, self._clock())
        place = read_place(body.get("meta", {}))
        points = [_coil_point(place, strip, d) for d in defects]
        with self._lock:
            self.totals["results"] += 1
            self.totals["defective"] += bool(defects)
            for d in defects:
                counts = self.class_counts.setdefault(d["name"], {"class_id": d["class_id"],
                                                                  "strips": 0, "area_px": 0})  # fmt: skip
                counts["strips"] += 1
                counts["area_px"] += d["area_px"]
            self.coil.extend(points)
            if draw:
                key = self._camera(camera)
                self.strips.setdefault(key, deque(maxlen=STRIPS_PER_CAMERA)).appendleft(strip)
        if draw:
            message = {"type": "strip", "strip": strip.summary(), "coil": points}
        elif points:
            message = {"type": "coil", "coil": points}
        else:
            return
        for listener in self._listeners:
            listener(message)

    def _defect_view(
        self, defect: dict[str, Any], height: int, width: int, outline: bool
    ) -> dict[str, Any]:
        return {
            "class_id": int(defect["class_id"]),
            "name": str(defect["name"]),
            "score": float(defect["score"]),
            "area_px": int(defect["area_px"]),
            "bbox": union_bbox(defect.get("components") or []),
            "contours": mask_contours(str(defect["mask_rle"]), height, width)
            if outline and 0 < height * width <= VIEW_MAX_PIXELS
            else [],
        }

    def count(self, kind: str, n: int = 1) -> None:
        with self._lock:
            self.totals[kind] += n
            self._rates[kind].add(self._clock(), n)

    def status(self, body: dict[str, Any]) -> None:
        with self._lock:
            self.last_status = self._clock()
            self.daemon = str(body.get("daemon", self.daemon))

    def source(self, lost: bool, endpoint: str) -> None:
        with self._lock:
            if lost:
                self.sources_lost[endpoint] = self._clock()
            else:
                self.sources_lost.pop(endpoint, None)

    def camera_link(self, endpoint: str, up: bool) -> None:
        """The view's own connection to a camera's frames (pixels), up or down."""
        with self._lock:
            (self.cameras_lost.discard if up else self.cameras_lost.add)(endpoint)

    # -- readers -------------------------------------------------------------------------------

    def problems(self) -> list[str]:
        """What the banner says is wrong, most serious first; empty when all is well."""
        now = self._clock()
        with self._lock:
            found = []
            if self.last_status is None:
                found.append(
                    "no status from the daemon yet: is it running, and is --source its --publish endpoint?"
                )
            elif now - self.last_status > STATUS_STALE_S:
                found.append(f"the daemon's status stopped {now - self.last_status:.0f} s ago")
            found += [f"the daemon lost camera source {e}" for e in sorted(self.sources_lost)]
            found += [f"the view cannot reach camera {e} (strips show without pixels)"
                      for e in sorted(self.cameras_lost)]  # fmt: skip
            return found

    def snapshot(self) -> dict[str, Any]:
        """Everything the page shows, for a browser that has just connected."""
        stats = self.stats()
        with self._lock:
            cameras = {c: [s.summary() for s in strips] for c, strips in self.strips.items()}
            coil = list(self.coil)
        keys = ("daemon", "classes", "totals", "rates_per_min", "invalid", "problems")
        return {"type": "snapshot", "cameras": cameras, "coil": coil, **{k: stats[k] for k in keys}}

    def stats(self) -> dict[str, Any]:
        """The counts, rates and problems alone: sent to every browser each second."""
        problems = self.problems()
        now = self._clock()
        with self._lock:
            return {
                "type": "stats",
                "daemon": self.daemon,
                "classes": {k: dict(v) for k, v in self.class_counts.items()},
                "totals": dict(self.totals),
                "rates_per_min": {k: round(r.per_minute(now), 2) for k, r in self._rates.items()},
                "invalid": self.invalid,
                "problems": problems,
            }

    def image(self, camera: str, seq: int) -> bytes | None:
        with self._lock:
            for strip in self.strips.get(camera, ()):
                if strip.seq == seq:
                    return strip.image
        return None


def _coil_point(place: Any, strip: StripView, defect: dict[str, Any]) -> dict[str, Any]:
    """Where a defect lies on the coil map: mm along the coil if the meta says, else strips."""
    x, y, w, h = defect["bbox"] or [0, 0, strip.width, strip.height]
    centre = x + w / 2
    along = place.column_mm(centre, strip.width)
    return {
        "coil": place.coil_id,
        "along": round(along if along is not None else strip.seq + centre / strip.width, 3),
        "unit": "mm" if along is not None else "strip",
        "across": round((y + h / 2) / strip.height, 4),  # 0 top edge .. 1 bottom edge
        "class_id": defect["class_id"],
        "area_px": defect["area_px"],
        "camera": strip.camera,
        "seq": strip.seq,
    }
