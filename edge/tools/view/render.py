"""Pixels for the operator view: a strip as JPEG, and each defect mask as outline polygons.

The page draws a defect as its mask's outline over the strip (SVG polygons in the class's
legend colour), not as a filled bitmap: a polygon carries its own hover text, stays sharp at
any zoom, and is a few hundred numbers where the mask is 400,000 pixels.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np

from edge.protocol.rle import decode

MAX_CONTOURS: Final = 32  # per defect: the largest outlines (a speckled mask has thousands)
MAX_POINTS: Final = 2000  # per defect, all outlines together
JPEG_QUALITY: Final = 80


def mask_contours(rle: str, height: int, width: int) -> list[list[int]]:
    """Outer outlines of an RLE mask as flat ``[x0, y0, x1, y1, ...]`` lists, largest first.

    Simplified to within a pixel; bounded by MAX_CONTOURS and MAX_POINTS. A malformed RLE
    gives no outline (the strip and its numbers still show).
    """
    try:
        mask = decode(rle, height, width)
    except ValueError:
        return []
    found, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ordered = sorted(found, key=lambda c: -cv2.contourArea(c) - len(c))[:MAX_CONTOURS]
    outlines: list[list[int]] = []
    points = 0
    for contour in ordered:
        simple = cv2.approxPolyDP(contour, 1.0, True).reshape(-1, 2)
        if points + len(simple) > MAX_POINTS:
            break
        points += len(simple)
        outlines.append(simple.flatten().tolist())
    return outlines


def strip_jpeg(pixels: np.ndarray) -> bytes:
    """A gray or RGB strip as JPEG, for the page's ``<img>``."""
    image = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY])
    if not ok:
        raise ValueError(f"JPEG encoding failed on a {list(pixels.shape)} strip")
    return data.tobytes()
