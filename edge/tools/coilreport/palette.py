"""The coil report's colours: the defect classes' come from edge.vision.palette, which every
drawing of defects shares (``edge view`` too), so a class looks the same everywhere."""

from __future__ import annotations

from edge.vision.palette import PALETTE, class_colour, class_rgb

__all__ = ["CLASS_COLOURS", "STRIP_EDGE", "STRIP_FILL", "class_colour", "class_rgb"]

# Severstal's four classes, as drawn: class 1 orange, 2 sky blue, 3 bluish green, 4 purple.
CLASS_COLOURS: dict[int, str] = {k: PALETTE[k - 1] for k in (1, 2, 3, 4)}
STRIP_FILL = "#EEEEEE"  # the strips seen, under their defects
STRIP_EDGE = "#BBBBBB"
