"""A JPEG crop of each defect, for stores and reports that keep no copy of the camera stream.

With ``publish_crops`` on, each ``defects[]`` entry of a result carries ``crop``: the frame's
pixels around the class's largest component as ``{"bbox": [x, y, w, h], "jpeg": bytes}``
(docs/protocol.md). Both sides are bounded, so the event stays bounded whatever the frame
shows: at most ``CROP_MAX_SIDE`` px a side (a larger component is cut to the square about its
centre) and at most ``CROP_MAX_BYTES`` of JPEG (a noisy crop is encoded again at a lower
quality; at the lowest, a 256 x 256 crop of pure noise is 13 kB).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import cv2
import numpy as np

CROP_MAX_SIDE: Final = 256
CROP_MAX_BYTES: Final = 32 * 1024
# Tried in order until the JPEG fits CROP_MAX_BYTES.
QUALITIES: Final = (85, 60, 30, 10)


def crop_box(bbox: Sequence[int], height: int, width: int) -> tuple[int, int, int, int]:
    """``bbox`` [x, y, w, h] cut to CROP_MAX_SIDE a side about its centre, within the frame."""
    x, y, w, h = (int(v) for v in bbox)

    def cut(start: int, size: int, limit: int) -> tuple[int, int]:
        if size > CROP_MAX_SIDE:
            start += (size - CROP_MAX_SIDE) // 2
            size = CROP_MAX_SIDE
        start = min(max(start, 0), max(limit - 1, 0))
        return start, max(1, min(size, limit - start))

    x, w = cut(x, w, width)
    y, h = cut(y, h, height)
    return x, y, w, h


def encode_crop(pixels: np.ndarray) -> bytes:
    """JPEG of a gray or RGB crop, at the best quality in QUALITIES that fits CROP_MAX_BYTES."""
    image = cv2.cvtColor(pixels, cv2.COLOR_RGB2BGR) if pixels.ndim == 3 else pixels
    data = b""
    for quality in QUALITIES:
        ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if not ok:
            raise ValueError(f"JPEG encoding failed on a {list(pixels.shape)} crop")
        data = encoded.tobytes()
        if len(data) <= CROP_MAX_BYTES:
            return data
    # Unreachable for crops within CROP_MAX_SIDE (13 kB at the lowest quality): said, not hidden.
    raise ValueError(f"a {list(pixels.shape)} crop is {len(data)} bytes even at quality 10")


def defect_crop(pixels: np.ndarray, defect: dict[str, Any]) -> dict[str, Any] | None:
    """The ``crop`` of one ``defects[]`` entry of a frame of ``pixels``; None without components."""
    components = defect.get("components") or []
    if not components:
        return None
    height, width = pixels.shape[:2]
    x, y, w, h = crop_box(components[0]["bbox"], height, width)
    return {
        "bbox": [x, y, w, h],
        "jpeg": encode_crop(np.ascontiguousarray(pixels[y : y + h, x : x + w])),
    }
