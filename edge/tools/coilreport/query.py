"""One coil's strips and defects, read from the defect store (edge.line.store)."""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.engine import Connection

from edge.line.store.database import Store
from edge.line.store.schema import defects, events

KNOWN_SHOWN = 10  # coil ids listed when the one asked for is not in the store


class ReportError(ValueError):
    """The report cannot be made as asked (unknown coil, nothing in the time range)."""


@dataclass(frozen=True)
class Strip:
    camera: str
    seq: int
    received_at: datetime
    position_mm: float | None
    strip_length_mm: float | None
    width: int
    height: int
    side: str | None
    file: str | None
    defective: bool


@dataclass(frozen=True)
class Defect:
    class_id: int
    name: str
    score: float | None
    area_px: int
    strip: Strip
    # [x, y, w, h] in the strip's pixels, one per component (largest first).
    boxes: list[list[int]]
    x_mm_start: float | None
    x_mm_end: float | None
    crop_jpeg: bytes | None = None

    def box_mm(self, box: list[int]) -> tuple[float, float] | None:
        """Where along the coil a box's columns lie, in mm; None if the strip has no place."""
        s = self.strip
        if s.position_mm is None or s.strip_length_mm is None or s.width <= 0:
            return None
        scale = s.strip_length_mm / s.width
        return s.position_mm + box[0] * scale, s.position_mm + (box[0] + box[2]) * scale


@dataclass
class CoilData:
    coil_id: str
    since: datetime | None
    until: datetime | None
    strips: list[Strip] = field(default_factory=list)
    defects: list[Defect] = field(default_factory=list)
    not_inspected: dict[str, int] = field(default_factory=dict)  # drop reason -> strips

    @property
    def first_at(self) -> datetime:
        return min(s.received_at for s in self.strips)

    @property
    def last_at(self) -> datetime:
        return max(s.received_at for s in self.strips)

    def per_class(self) -> dict[int, dict[str, Any]]:
        """class_id -> {name, count, components, area_px, strips}: count is defects (the daemon
        reports one per class and strip), components their connected parts (boxes drawn)."""
        out: dict[int, dict[str, Any]] = {}
        strips: dict[int, set[tuple[str, int]]] = defaultdict(set)
        for d in self.defects:
            entry = out.setdefault(
                d.class_id, {"name": d.name, "count": 0, "components": 0, "area_px": 0}
            )
            entry["count"] += 1
            entry["components"] += len(d.boxes)
            entry["area_px"] += d.area_px
            strips[d.class_id].add((d.strip.camera, d.strip.seq))
        for class_id, entry in out.items():
            entry["strips"] = len(strips[class_id])
        return dict(sorted(out.items()))


def known_coils(connection: Connection, limit: int = KNOWN_SHOWN) -> list[str]:
    """The coil ids most recently seen, newest first."""
    last = func.max(events.c.received_at)
    query = (
        select(events.c.coil_id)
        .where(events.c.coil_id.is_not(None))
        .group_by(events.c.coil_id)
        .order_by(last.desc())
        .limit(limit)
    )
    return list(connection.execute(query).scalars())


def coils_between(
    store: Store, since: datetime | None, until: datetime | None
) -> tuple[list[str], int]:
    """The coils with results received in [since, until), in the order first seen; and how many
    results in that time carry no coil_id (a shift report names them, it cannot place them)."""
    span = events.c.kind == "result"
    if since is not None:
        span = span & (events.c.received_at >= since)
    if until is not None:
        span = span & (events.c.received_at < until)
    first = func.min(events.c.received_at)
    with store.engine.connect() as connection:
        coils = connection.execute(
            select(events.c.coil_id)
            .where(span & events.c.coil_id.is_not(None))
            .group_by(events.c.coil_id)
            .order_by(first, events.c.coil_id)
        ).scalars()
        unplaced = connection.execute(
            select(func.count()).select_from(events).where(span & events.c.coil_id.is_(None))
        ).scalar_one()
        return list(coils), int(unplaced)


def _span(since: datetime | None, until: datetime | None) -> str:
    start = since.isoformat() if since else "the start"
    end = until.isoformat() if until else "now"
    return f"between {start} and {end}"


def _check_known(connection: Connection, coil_id: str, where: str) -> None:
    count = connection.execute(
        select(func.count()).select_from(events).where(events.c.coil_id == coil_id)
    ).scalar_one()
    if count:
        return
    known = known_coils(connection)
    listed = ", ".join(known) if known else "none: no event in it carries a coil_id"
    raise ReportError(f"coil {coil_id!r} is not in the store at {where}; known coils: {listed}")


def _strip(row: Any) -> Strip:
    return Strip(
        camera=row.camera,
        seq=row.seq,
        received_at=row.received_at,
        position_mm=row.position_mm,
        strip_length_mm=row.strip_length_mm,
        width=row.width or 0,
        height=row.height or 0,
        side=row.side,
        file=row.file,
        defective=bool(row.defective),
    )


def load_coil(
    store: Store,
    coil_id: str,
    since: datetime | None = None,
    until: datetime | None = None,
) -> CoilData:
    """The coil's results (and drops) received in [since, until); ReportError if there are none."""
    span = events.c.coil_id == coil_id
    if since is not None:
        span = span & (events.c.received_at >= since)
    if until is not None:
        span = span & (events.c.received_at < until)
    data = CoilData(coil_id, since, until)
    with store.engine.connect() as connection:
        _check_known(connection, coil_id, store.where)
        rows = connection.execute(
            select(events)
            .where(span & (events.c.kind == "result"))
            .order_by(events.c.position_mm, events.c.camera, events.c.seq, events.c.id)
        ).all()
        by_id = {row.id: _strip(row) for row in rows}
        data.strips = list(by_id.values())
        drops = connection.execute(
            select(events.c.reason, func.count())
            .where(span & (events.c.kind == "drop"))
            .group_by(events.c.reason)
        ).all()
        data.not_inspected = {str(reason): int(n) for reason, n in drops}
        if not data.strips:
            raise ReportError(
                f"coil {coil_id!r} has no inspected strip {_span(since, until)} in {store.where}"
                + (f" ({sum(data.not_inspected.values())} dropped)" if data.not_inspected else "")
            )
        defect_rows = connection.execute(
            select(defects)
            .join(events, defects.c.event_id == events.c.id)
            .where(span & (events.c.kind == "result"))
            .order_by(events.c.position_mm, events.c.camera, events.c.seq, defects.c.class_id)
        ).all()
    for row in defect_rows:
        components = json.loads(row.components)
        boxes = [list(map(int, c["bbox"])) for c in components if "bbox" in c]
        data.defects.append(
            Defect(
                class_id=row.class_id,
                name=row.name or f"class {row.class_id}",
                score=row.score,
                area_px=row.area_px or 0,
                strip=by_id[row.event_id],
                boxes=boxes,
                x_mm_start=row.x_mm_start,
                x_mm_end=row.x_mm_end,
                crop_jpeg=row.crop_jpeg,
            )
        )
    return data
