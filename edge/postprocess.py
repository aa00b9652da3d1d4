"""From stitched probabilities to defects: threshold, drop small components, encode masks."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge import rle
from edge.modelspec import ModelSpec
from edge.tiling import Tile


def class_mask(
    probs: np.ndarray, threshold: float, min_area: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The thresholded mask of one class with components under ``min_area`` px removed.

    Returns the mask and its kept components ``{bbox: [x, y, w, h], area_px}``, largest first.
    """
    binary = (probs >= threshold).astype(np.uint8)
    if not binary.any():
        return binary.astype(bool), []
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= max(min_area, 1)
    keep[0] = False  # label 0 is the background
    components = [
        {"bbox": [int(v) for v in stats[k, :4]], "area_px": int(areas[k])}
        for k in np.flatnonzero(keep)
    ]
    components.sort(key=lambda c: -c["area_px"])
    mask = keep[labels] if count > 1 else np.zeros_like(binary, dtype=bool)
    return mask, components


def defects_from_probs(
    probs: np.ndarray, spec: ModelSpec, region: Tile | None = None
) -> list[dict[str, Any]]:
    """One defect entry per class present after thresholds (see docs/protocol.md).

    ``region`` (from the cascade) is a full-height band of columns outside which ``probs`` is
    0; only the band is examined then, with the same result as the whole strip.
    """
    defects = []
    thresholds = spec.per_class("mask")
    min_areas = spec.per_class("min_area")
    height, width = probs.shape[1:]
    x0, x1 = 0, width
    # A threshold <= 0 marks the zeros outside the band too: look at everything then.
    if region is not None and region.h == height and min(thresholds) > 0:
        x0, x1 = region.x, region.x + region.w
    for k, name in enumerate(spec.classes):
        band = probs[k, :, x0:x1]
        mask, components = class_mask(band, thresholds[k], int(min_areas[k]))
        if not components:
            continue
        if x0:
            for component in components:
                component["bbox"][0] += x0
        defects.append(
            {
                "class_id": k + 1,
                "name": name,
                "score": round(float(band[mask].mean()), 4),
                "area_px": int(sum(c["area_px"] for c in components)),
                # Column-major pixel numbers: the band starts x0 full columns into the strip.
                "mask_rle": rle.encode(mask, start=x0 * height),
                "components": components,
            }
        )
    return defects
