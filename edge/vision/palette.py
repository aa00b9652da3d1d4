"""The legend's colour of each defect class, shared by everything that draws defects.

Okabe and Ito's colour-blind-safe palette (a plant's operators include the 1 in 12 men with a
red-green deficiency), without its black and grey: those are the strip's own colours.
``edge view`` and ``edge report`` draw class ``k`` (1-based, as in ``class_id``) in
``class_colour(k)``, so a class looks the same on the live page and in the shift report.
"""

from __future__ import annotations

from typing import Final

# Orange, sky blue, bluish green, reddish purple, then yellow, blue, vermillion.
PALETTE: Final = ("#E69F00", "#56B4E9", "#009E73", "#CC79A7", "#F0E442", "#0072B2", "#D55E00")


def class_colour(class_id: int) -> str:
    """``#RRGGBB`` of a 1-based class id (more classes than colours reuse them in order)."""
    return PALETTE[(class_id - 1) % len(PALETTE)]


def class_rgb(class_id: int) -> tuple[int, int, int]:
    """``class_colour`` as an (R, G, B) tuple of 0..255."""
    colour = class_colour(class_id)
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
