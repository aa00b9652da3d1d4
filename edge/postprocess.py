"""From stitched probabilities to defects: threshold, drop small components, encode masks."""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np

from edge import rle
from edge.cascade import StripResult
from edge.modelspec import ModelSpec


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
    components.sort(key=_largest_first)
    mask = keep[labels] if count > 1 else np.zeros_like(binary, dtype=bool)
    return mask, components


def _largest_first(component: dict[str, Any]) -> tuple[int, int, int]:
    # Ties go left to right, then top to bottom: an order of the strip's own, the same whether
    # one band or the whole strip was examined (OpenCV's label order depends on the image).
    x, y = component["bbox"][:2]
    return -component["area_px"], x, y


def strip_defects(result: StripResult, spec: ModelSpec) -> list[dict[str, Any]]:
    """The defects of one strip the cascade ran, from its bands (see ``defects_in_bands``)."""
    if not result.bands:
        return []
    full_height = all(b.region.y == 0 and b.region.h == result.shape[0] for b in result.bands)
    # A threshold <= 0 marks the zeros outside the bands too: look at the whole strip then.
    if full_height and min(spec.per_class("mask")) > 0:
        return defects_in_bands([(b.region.x, b.probs) for b in result.bands], spec)
    probs = result.probs
    assert probs is not None
    return defects_from_probs(probs, spec)


def defects_from_probs(probs: np.ndarray, spec: ModelSpec) -> list[dict[str, Any]]:
    """One defect entry per class present after thresholds (see docs/protocol.md)."""
    return defects_in_bands([(0, probs)], spec)


def defects_in_bands(bands: list[tuple[int, np.ndarray]], spec: ModelSpec) -> list[dict[str, Any]]:
    """``defects_from_probs`` of a strip that is 0 outside ``bands``, examining only them.

    Each band is (x0, K x H x w): full-height columns of the strip from column ``x0``, left to
    right and apart (no component crosses between them). Bounding boxes and masks come out in
    the strip's coordinates, exactly as the whole strip would give them.
    """
    defects = []
    thresholds = spec.per_class("mask")
    min_areas = spec.per_class("min_area")
    for k, name in enumerate(spec.classes):
        components: list[dict[str, Any]] = []
        runs: list[str] = []
        prob_sum = 0.0
        for x0, probs in bands:
            mask, found = class_mask(probs[k], thresholds[k], int(min_areas[k]))
            if not found:
                continue
            for component in found:
                component["bbox"][0] += x0
            components += found
            prob_sum += float(probs[k][mask].sum(dtype=np.float64))
            # Column-major pixel numbers: the band starts x0 full columns into the strip.
            runs.append(rle.encode(mask, start=x0 * probs.shape[1]))
        if not components:
            continue
        components.sort(key=_largest_first)
        area = sum(c["area_px"] for c in components)
        defects.append(
            {
                "class_id": k + 1,
                "name": name,
                "score": round(prob_sum / area, 4),
                "area_px": area,
                "mask_rle": " ".join(runs),
                "components": components,
            }
        )
    return defects
