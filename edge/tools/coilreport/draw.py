"""The coil map: length along the coil (m) x rows across the strip, each defect's boxes in its
class colour, the strips seen as grey, a legend with per-class counts and areas.

Drawn on matplotlib's Agg canvas directly (no pyplot): no display, no global figure state.
"""

from __future__ import annotations

import io
from datetime import datetime

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle

from edge.tools.coilreport.palette import STRIP_EDGE, STRIP_FILL, class_colour
from edge.tools.coilreport.query import CoilData

WIDTH_IN, HEIGHT_IN, DPI = 12.0, 4.0, 100  # 1200 x 400 px


def time_range(data: CoilData) -> str:
    first, last = data.first_at, data.last_at
    end = f"{last:%H:%M:%S}" if first.date() == last.date() else _stamp(last)
    return f"{_stamp(first)} - {end} UTC"


def _stamp(when: datetime) -> str:
    return f"{when:%Y-%m-%d %H:%M:%S}"


def legend_label(class_id: int, name: str, count: int, area_px: int) -> str:
    return f"{class_id} {name}: {count} defect{'s' if count != 1 else ''}, {area_px:,} px"


def coil_map_png(data: CoilData) -> bytes:
    """The coil map as PNG bytes (WIDTH_IN x HEIGHT_IN at DPI)."""
    figure = Figure(figsize=(WIDTH_IN, HEIGHT_IN), dpi=DPI)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    placed = [s for s in data.strips if s.position_mm is not None and s.strip_length_mm]
    height = max((s.height for s in data.strips), default=256) or 256
    for strip in placed:
        assert strip.position_mm is not None and strip.strip_length_mm is not None
        axes.add_patch(
            Rectangle(
                (strip.position_mm / 1000, 0), strip.strip_length_mm / 1000, strip.height or height,
                facecolor=STRIP_FILL, edgecolor=STRIP_EDGE, linewidth=0.5,
            )
        )  # fmt: skip
    for defect in data.defects:
        colour = class_colour(defect.class_id)
        for box in defect.boxes:
            span = defect.box_mm(box)
            if span is None:
                continue
            axes.add_patch(
                Rectangle(
                    (span[0] / 1000, box[1]), max(span[1] - span[0], 1.0) / 1000, max(box[3], 1),
                    facecolor=colour, edgecolor=colour, alpha=0.7, linewidth=0.8,
                )
            )  # fmt: skip
    if placed:
        start = min(s.position_mm or 0.0 for s in placed) / 1000
        end = max((s.position_mm or 0.0) + (s.strip_length_mm or 0.0) for s in placed) / 1000
        axes.set_xlim(start, max(end, start + 0.001))
    axes.set_ylim(height, 0)  # row 0 at the top, as in the camera's image
    axes.set_xlabel("position along the coil (m)")
    axes.set_ylabel("across the strip (px row)")
    unplaced = len(data.strips) - len(placed)
    note = f", {unplaced} without a position (not drawn)" if unplaced else ""
    axes.set_title(
        f"coil {data.coil_id} · {time_range(data)} · {len(data.strips)} strips{note}", fontsize=10
    )
    handles = [
        Patch(color=class_colour(cid), label=legend_label(cid, c["name"], c["count"], c["area_px"]))
        for cid, c in data.per_class().items()
    ]
    if not handles:
        handles = [Patch(color=STRIP_FILL, label="no defects")]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    figure.subplots_adjust(left=0.06, right=0.76, bottom=0.13, top=0.9)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return buffer.getvalue()
