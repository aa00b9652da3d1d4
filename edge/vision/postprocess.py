"""From stitched probabilities to defects: threshold, drop small components, encode masks.

What one event holds is bounded whatever the frame shows: a noisy frame (a camera glitch, a
crafted image) can threshold into hundreds of thousands of specks, and listing each of them, or
encoding their mask run by run, would cost seconds and hundreds of megabytes per frame. So per
class at most ``MAX_COMPONENTS`` components are listed (the largest; ``components_total`` says
how many there were), and a mask of more than ``MAX_MASK_RUNS`` runs is sent as its filled
bounding box (``mask_truncated``). ``area_px`` and ``score`` always count every pixel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.protocol import rle
from edge.vision.cascade import StripResult
from edge.vision.modelspec import ModelSpec

MAX_COMPONENTS = 64
MAX_MASK_RUNS = 32768


def class_mask(
    probs: np.ndarray, threshold: float, min_area: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The thresholded mask of one class with components under ``min_area`` px removed.

    Returns the mask and its kept components ``{bbox: [x, y, w, h], area_px}``, largest first.
    """
    found = _class_mask(probs, threshold, min_area, limit=None)
    return found.mask, found.components


@dataclass(slots=True)
class _Found:
    mask: np.ndarray
    components: list[dict[str, Any]]  # the largest ``limit``, largest first
    count: int  # components kept, listed or not
    area: int  # their pixels
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 around every kept component


def _class_mask(probs: np.ndarray, threshold: float, min_area: int, limit: int | None) -> _Found:
    binary = (probs >= threshold).astype(np.uint8)
    if not binary.any():
        return _Found(binary.astype(bool), [], 0, 0, None)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(binary, connectivity=8)
    areas = stats[:, cv2.CC_STAT_AREA]
    keep = areas >= max(min_area, 1)
    keep[0] = False  # label 0 is the background
    kept = np.flatnonzero(keep)
    if kept.size == 0:
        return _Found(np.zeros_like(binary, dtype=bool), [], 0, 0, None)
    x, y, w, h = (stats[kept, i] for i in range(4))
    box = (int(x.min()), int(y.min()), int((x + w).max()), int((y + h).max()))
    listed = kept
    if limit is not None and kept.size > limit:
        # Vectorised: a noisy frame has ~10^5 components, and one dict each costs seconds.
        listed = kept[np.lexsort((y, x, -areas[kept]))[:limit]]
    components = [
        {"bbox": [int(v) for v in stats[k, :4]], "area_px": int(areas[k])} for k in listed
    ]
    components.sort(key=_largest_first)
    return _Found(keep[labels] if count > 1 else np.zeros_like(binary, dtype=bool), components,
                  int(kept.size), int(areas[kept].sum()), box)  # fmt: skip


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
        masks: list[tuple[int, np.ndarray]] = []
        boxes: list[tuple[int, int, int, int]] = []
        count = area = 0
        prob_sum = 0.0
        for x0, probs in bands:
            found = _class_mask(probs[k], thresholds[k], int(min_areas[k]), MAX_COMPONENTS)
            if not found.count:
                continue
            for component in found.components:
                component["bbox"][0] += x0
            components += found.components
            count += found.count
            assert found.box is not None
            boxes.append((found.box[0] + x0, found.box[1], found.box[2] + x0, found.box[3]))
            area += found.area
            prob_sum += float(probs[k][found.mask].sum(dtype=np.float64))
            masks.append((x0, found.mask))
        if not components:
            continue
        components.sort(key=_largest_first)
        height = masks[0][1].shape[0]
        defect: dict[str, Any] = {
            "class_id": k + 1,
            "name": name,
            "score": round(prob_sum / area, 4),
            "area_px": area,
            "mask_rle": "",
            "components": components[:MAX_COMPONENTS],
        }
        # A run holds one pixel at least: only a mask of more pixels can have too many runs.
        if area <= MAX_MASK_RUNS or sum(rle.runs(m) for _, m in masks) <= MAX_MASK_RUNS:
            # Column-major pixel numbers: a band starts x0 full columns into the strip.
            defect["mask_rle"] = " ".join(rle.encode(m, start=x0 * height) for x0, m in masks)
        else:
            defect["mask_rle"] = _box_rle(_union(boxes), height)
            defect["mask_truncated"] = True
        if count > MAX_COMPONENTS:
            defect["components_total"] = count
        defects.append(defect)
    return defects


def _union(boxes: list[tuple[int, int, int, int]]) -> tuple[int, int, int, int]:
    return (
        min(b[0] for b in boxes),
        min(b[1] for b in boxes),
        max(b[2] for b in boxes),
        max(b[3] for b in boxes),
    )


def _box_rle(box: tuple[int, int, int, int], height: int) -> str:
    """RLE of the filled box (x0, y0, x1, y1) on a strip ``height`` rows high: a run a column."""
    x0, y0, x1, y1 = box
    return " ".join(f"{x * height + y0 + 1} {y1 - y0}" for x in range(x0, x1))
