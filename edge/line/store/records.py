"""One daemon message as the store's rows: pure functions, no database.

``event_record`` reads what the store keeps as columns (docs/protocol.md; the line place from
``meta`` by edge.protocol.linemeta) and keeps the rest of the body as JSON text, so nothing the
daemon sent is dropped on the way in, fields added later included.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from edge.protocol.linemeta import LinePlace, read_place

# Body keys that become columns (or defect rows) and are not repeated in ``body``.
COLUMN_KEYS = ("v", "kind", "camera", "seq", "ts_ns", "shape", "defective", "reason", "latency_ms")
INVALID = "invalid"


@dataclass
class Record:
    """An ``events`` row and its ``defects`` rows (without ids: the writer fills them in)."""

    event: dict[str, Any]
    defects: list[dict[str, Any]] = field(default_factory=list)
    problems: tuple[str, ...] = ()  # meta keys of the line convention that were unusable

    @property
    def size(self) -> int:
        """Roughly the bytes it holds while queued: its texts and crops, plus a fixed part."""
        total = 512 + len(self.event.get("body") or "")
        for row in self.defects:
            total += 256 + len(row.get("mask_rle") or "") + len(row.get("components") or "")
            total += len(row.get("crop_jpeg") or b"")
        return total


def _json_default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"base64": base64.b64encode(bytes(value)).decode("ascii")}
    return repr(value)


def to_json(value: Any) -> str:
    # ensure_ascii: NUL and every other control character as \uXXXX, which PostgreSQL's
    # text takes; the same text on SQLite.
    return json.dumps(value, default=_json_default, sort_keys=True, separators=(",", ":"))


INT64 = 2**63


def _int(value: Any) -> int | None:
    """An integer a BIGINT column holds; None for anything else (kept in ``body`` then)."""
    if isinstance(value, int) and not isinstance(value, bool) and -INT64 <= value < INT64:
        return value
    return None


def _float(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _text(value: Any) -> str | None:
    # PostgreSQL's text cannot hold NUL; the same replacement on SQLite keeps both alike.
    return value.replace("\x00", "\ufffd") if isinstance(value, str) else None


def union_bbox(components: list[dict[str, Any]]) -> tuple[int, int, int, int] | None:
    """The box [x, y, w, h] around every component's box; None without components."""
    boxes = [c["bbox"] for c in components if isinstance(c, dict) and "bbox" in c]
    if not boxes:
        return None
    x0 = min(int(b[0]) for b in boxes)
    y0 = min(int(b[1]) for b in boxes)
    x1 = max(int(b[0]) + int(b[2]) for b in boxes)
    y1 = max(int(b[1]) + int(b[3]) for b in boxes)
    return x0, y0, x1 - x0, y1 - y0


def _crop(entry: dict[str, Any]) -> tuple[str | None, bytes | None]:
    crop = entry.get("crop")
    if not isinstance(crop, dict):
        return None, None
    jpeg = crop.get("jpeg")
    jpeg = bytes(jpeg) if isinstance(jpeg, bytes | bytearray | memoryview) and jpeg else None
    bbox = crop.get("bbox")
    return (to_json(bbox) if bbox is not None else None), jpeg


def defect_row(entry: dict[str, Any], place: LinePlace, width: int | None) -> dict[str, Any]:
    """One ``defects[]`` entry as a row. A missing class_id or a box that is not numbers raises
    (KeyError/TypeError/ValueError): the event is then kept as ``invalid``, not half-stored."""
    components = entry.get("components") or []
    if not isinstance(components, list):
        raise TypeError(f"defect components must be a list, got {type(components).__name__}")
    box = union_bbox(components)
    x_start = x_end = None
    if box is not None and width:
        x_start = place.column_mm(box[0], width)
        x_end = place.column_mm(box[0] + box[2], width)
    crop_bbox, crop_jpeg = _crop(entry)
    class_id = entry["class_id"]
    if _int(class_id) is None:
        raise TypeError(f"defect class_id must be an integer, got {class_id!r}")
    return {
        "class_id": class_id,
        "name": _text(entry.get("name")),
        "score": _float(entry.get("score")),
        "area_px": _int(entry.get("area_px")),
        "bbox_x": None if box is None else box[0],
        "bbox_y": None if box is None else box[1],
        "bbox_w": None if box is None else box[2],
        "bbox_h": None if box is None else box[3],
        "x_mm_start": x_start,
        "x_mm_end": x_end,
        "components": to_json(components),
        "mask_rle": _text(entry.get("mask_rle")),
        "crop_bbox": crop_bbox,
        "crop_jpeg": crop_jpeg,
    }


def _rest(body: dict[str, Any]) -> dict[str, Any]:
    """What the columns do not hold, for ``body``; crops' bytes live in defects.crop_jpeg."""
    rest = {k: v for k, v in body.items() if k not in COLUMN_KEYS}
    for key in ("seq", "ts_ns"):  # an integer beyond BIGINT: its column is NULL, keep it here
        if key in body and body[key] is not None and _int(body[key]) is None:
            rest[f"{key}_unstored"] = body[key]
    defects = rest.pop("defects", None)
    if isinstance(defects, list):
        # The defect rows hold all of each entry but unknown keys: keep those here.
        known = {"class_id", "name", "score", "area_px", "components", "mask_rle", "crop"}
        extra = [{k: v for k, v in d.items() if k not in known} for d in defects]
        if any(extra):
            rest["defects_extra"] = extra
    elif defects is not None:
        rest["defects"] = defects
    return rest


def event_record(body: dict[str, Any], received_at: datetime, daemon: str | None = None) -> Record:
    """The rows of one event body (a map with ``kind``); raises on a malformed defect."""
    kind = body["kind"]
    if not isinstance(kind, str):
        raise TypeError(f"event kind must be a string, got {kind!r}")
    place = read_place(body["meta"]) if "meta" in body else LinePlace()
    shape = body.get("shape")
    height = width = None
    if isinstance(shape, list | tuple) and len(shape) >= 2:
        height, width = _int(shape[0]), _int(shape[1])
    defects = body.get("defects") or []
    if not isinstance(defects, list):
        raise TypeError(f"defects must be a list, got {type(defects).__name__}")
    defective = body.get("defective")
    row = {
        "kind": kind,
        "camera": _text(body.get("camera")),
        "seq": _int(body.get("seq", body.get("first_seq"))),
        "ts_ns": _int(body.get("ts_ns")),
        "received_at": received_at,
        "daemon": _text(body.get("daemon")) or daemon,
        "coil_id": place.coil_id,
        "position_mm": place.position_mm,
        "strip_length_mm": place.strip_length_mm,
        "side": place.side,
        "file": place.file,
        "width": width,
        "height": height,
        "defective": defective if isinstance(defective, bool) else None,
        "reason": _text(body.get("reason")),
        "latency_ms": _float(body.get("latency_ms")),
        "body": to_json(_rest(body)),
    }
    return Record(row, [defect_row(d, place, width) for d in defects], place.problems)


def invalid_record(
    reason: str,
    received_at: datetime,
    daemon: str | None = None,
    *,
    camera: str | None = None,
    seq: int | None = None,
    body: str = "{}",
) -> Record:
    """A message the store could not read (or the database refused): a row of kind
    ``invalid`` with the reason, and what is known of the message."""
    row: dict[str, Any] = {key: None for key in ("ts_ns", "coil_id", "position_mm")}
    row.update(
        kind=INVALID,
        camera=_text(camera),
        seq=_int(seq),
        received_at=received_at,
        daemon=daemon,
        reason=_text(reason[:2000]),
        body=body,
        strip_length_mm=None,
        side=None,
        file=None,
        width=None,
        height=None,
        defective=None,
        latency_ms=None,
    )
    return Record(row)
