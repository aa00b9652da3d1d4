"""The line's ``meta`` convention: where on which coil a strip was taken.

The daemon copies a frame header's ``meta`` unchanged into its ``result`` and ``drop`` events
and never interprets it. These keys are the convention the line's own tools share (``edge
camera``/``edge replay`` set them, ``edge store`` files defects under them, ``edge report``
draws a coil map from them); docs/integration.md is the reference:

- ``coil_id`` (str): the coil (or plate, or lot) the strip belongs to;
- ``position_mm`` (number >= 0): where along the coil the strip's first column (x = 0) lies;
- ``strip_length_mm`` (number > 0): how much of the coil's length the strip's width covers, so
  column x lies at ``position_mm + x * strip_length_mm / w``;
- ``side`` (str): ``"top"`` or ``"bottom"``, the surface the camera sees;
- ``file`` (str): the image file the strip came from, when it came from one.

Reading is tolerant by design: a camera that sends another type under one of these keys still
gets its frames inspected (the daemon does not look), and a reader gets the problem named.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

COIL_ID = "coil_id"
POSITION_MM = "position_mm"
STRIP_LENGTH_MM = "strip_length_mm"
SIDE = "side"
FILE = "file"
SIDES = ("top", "bottom")
KEYS = (COIL_ID, POSITION_MM, STRIP_LENGTH_MM, SIDE, FILE)


@dataclass(frozen=True)
class LinePlace:
    """The convention's keys read from one event's ``meta``; None where absent or unusable."""

    coil_id: str | None = None
    position_mm: float | None = None
    strip_length_mm: float | None = None
    side: str | None = None
    file: str | None = None
    problems: tuple[str, ...] = field(default=())

    def column_mm(self, x: float, width_px: int) -> float | None:
        """Where along the coil column ``x`` of a ``width_px`` wide strip lies, if known."""
        if self.position_mm is None or self.strip_length_mm is None or width_px <= 0:
            return None
        return self.position_mm + x * self.strip_length_mm / width_px


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def read_place(meta: Any) -> LinePlace:
    """Read the convention's keys from an event's ``meta``; what is unusable is named."""
    if not isinstance(meta, Mapping):
        return LinePlace(problems=(f"meta must be a map, got {type(meta).__name__}",))
    problems: list[str] = []

    def text(key: str) -> str | None:
        value = meta.get(key)
        if value is None:
            return None
        if isinstance(value, str) and value:
            return value
        problems.append(f"meta {key!r} must be a non-empty string, got {value!r}")
        return None

    def number(key: str, *, positive: bool) -> float | None:
        raw = meta.get(key)
        if raw is None:
            return None
        value = _number(raw)
        if value is None or value < 0 or (positive and value == 0):
            bound = "> 0" if positive else ">= 0"
            problems.append(f"meta {key!r} must be a number {bound}, got {raw!r}")
            return None
        return value

    coil_id = text(COIL_ID)
    position = number(POSITION_MM, positive=False)
    length = number(STRIP_LENGTH_MM, positive=True)
    side = text(SIDE)
    if side is not None and side not in SIDES:
        problems.append(f"meta {SIDE!r} must be one of {list(SIDES)}, got {side!r}")
        side = None
    return LinePlace(coil_id, position, length, side, text(FILE), tuple(problems))


def strip_meta(
    base: Mapping[str, Any],
    index: int,
    *,
    strip_length_mm: float | None = None,
    start_mm: float = 0.0,
    file: str | None = None,
) -> dict[str, Any]:
    """The meta of a source's ``index``-th strip (0-based): ``base`` plus its place.

    With ``strip_length_mm`` the position advances by that much per strip from ``start_mm``,
    as strips cut from a coil moving past the camera would.
    """
    meta = dict(base)
    if strip_length_mm is not None:
        if not strip_length_mm > 0:
            raise ValueError(f"strip_length_mm must be > 0, got {strip_length_mm}")
        meta[POSITION_MM] = round(start_mm + index * strip_length_mm, 6)
        meta[STRIP_LENGTH_MM] = strip_length_mm
    if file is not None:
        meta[FILE] = file
    return meta


def parse_assignments(items: list[str] | None) -> dict[str, str]:
    """``["coil_id=C123", "side=top"]`` -> a dict; values stay strings (``00123`` is an id)."""
    meta: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"--meta takes key=value, e.g. coil_id=C123; got {item!r}")
        if key in (POSITION_MM, STRIP_LENGTH_MM):
            raise ValueError(
                f"--meta {key}=... is not taken: positions are numbers, set them with "
                "--strip-length-mm (and --start-mm)"
            )
        if key == SIDE and value not in SIDES:
            raise ValueError(f"--meta side must be one of {list(SIDES)}, got {value!r}")
        meta[key] = value
    return meta
