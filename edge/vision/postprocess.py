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

from edge.vision import components as cc
from edge.vision.cascade import StripResult
from edge.vision.modelspec import ModelSpec
from edge.vision.preprocess import PROB_SCALE, mask_level, quantise

MAX_COMPONENTS = 64
MAX_MASK_RUNS = 32768


def levels(probs: np.ndarray) -> np.ndarray:
    """Maps as the thresholds take them: uint8 round(255 * p) (float probabilities converted)."""
    return probs if probs.dtype == np.uint8 else quantise(probs)


def class_mask(
    probs: np.ndarray, threshold: float, min_area: int
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The thresholded mask of one class with components under ``min_area`` px removed.

    ``probs``: one class's uint8 map, or float probabilities. Returns the mask and its kept
    components ``{bbox: [x, y, w, h], area_px}``, largest first.
    """
    q = levels(probs)
    found = _class_mask(q, mask_level(threshold), min_area, limit=None)
    mask = np.zeros(q.shape, bool) if found.runs is None else cc.paint(found.runs, q.shape[1])
    return mask, found.components


@dataclass(slots=True)
class _Found:
    runs: cc.Runs | None  # the kept components' column runs (None: nothing kept)
    components: list[dict[str, Any]]  # the largest ``limit``, largest first
    count: int  # components kept, listed or not
    area: int  # their pixels
    level_sum: int  # the sum of their pixels' uint8 levels (the score's numerator)
    box: tuple[int, int, int, int] | None  # x0, y0, x1, y1 around every kept component


_NOTHING = _Found(None, [], 0, 0, 0, None)


def _class_mask(q: np.ndarray, level: int, min_area: int, limit: int | None) -> _Found:
    return _find([q], [level], [min_area], limit)[0]


# Runs labelled together at most (more only when one map alone has more): a strip's classes
# and bands go in one pass when they are a few blobs, and a noisy frame's classes one at a
# time, so what labelling holds stays what one class's mask costs (edge.daemon.memory).
RUNS_AT_ONCE = 16384


def _find(
    maps: list[np.ndarray], levels: list[int], min_areas: list[int], limit: int | None
) -> list[_Found]:
    """Per 2-D uint8 map (one class of one band; all of one height): its mask at its level,
    components under its min_area dropped, the largest ``limit`` listed. Maps go through
    ``edge.vision.components`` together (up to RUNS_AT_ONCE runs): the calls per map are a
    few, not a few dozen."""
    found = [_NOTHING] * len(maps)
    group: list[tuple[int, cc.Runs, int]] = []  # (map, its runs, its level sum)
    held = 0
    for i, (q, level) in enumerate(zip(maps, levels, strict=True)):
        seen = _runs_of(q, level)
        if seen is None:
            continue
        if group and held + len(seen[0]) > RUNS_AT_ONCE:
            _label(group, maps, min_areas, limit, found)
            group, held = [], 0
        group.append((i, *seen))
        held += len(seen[0])
    if group:
        _label(group, maps, min_areas, limit, found)
    return found


def _runs_of(q: np.ndarray, level: int) -> tuple[cc.Runs, int] | None:
    """The runs of ``q >= level`` and the sum of ``q`` over them; None if there are none.

    Thresholded on the transpose (column after column: the RLE's order), in buffers this
    thread keeps."""
    # Most classes of a band are absent: one read of the map says so, instead of the passes
    # below (measured: 4 us against ~25 for a 256 x 1600 map).
    if level > PROB_SCALE or q.max() < level:
        return None
    height, width = q.shape
    shape = (width, height)
    q_t = cv2.transpose(q, dst=cc.scratch("levels", q.size, np.uint8).reshape(shape))
    binary = np.greater_equal(q_t, level, out=cc.scratch("binary", q.size, np.bool_).reshape(shape))
    bits = binary.view(np.uint8)
    # The levels >= level, the others 0 (q > level - 1), summed: one pass less than q * bits.
    masked = cc.scratch("masked", q.size, np.uint8).reshape(shape)
    cv2.threshold(q_t, level - 1, 0, cv2.THRESH_TOZERO, dst=masked)
    level_sum = int(cv2.sumElems(masked)[0])
    return cc.runs_of_columns(bits.ravel(), height), level_sum


def _label(
    group: list[tuple[int, cc.Runs, int]],
    maps: list[np.ndarray],
    min_areas: list[int],
    limit: int | None,
    found: list[_Found],
) -> None:
    """Components of the group's maps, labelled together, into ``found``."""
    every = cc.components_of([runs for _, runs, _ in group])
    stats = every.stats
    floor = np.maximum(np.asarray([min_areas[i] for i, _, _ in group], np.int64), 1)
    keep = stats.area >= floor[every.mask_of]
    kept_run = keep[every.labels]
    for m, (i, _, level_sum) in enumerate(group):
        ours = every.mask_of == m
        kept = np.flatnonzero(keep & ours)
        if kept.size == 0:
            continue
        mine = every.mask_of_run == m
        kept_runs = every.runs.select(mine & kept_run)
        if kept.size < np.count_nonzero(ours):  # less the components dropped
            level_sum -= _levels_over(maps[i], every.runs.select(mine & ~kept_run))
        x0, y0, x1, y1 = stats.x0[kept], stats.y0[kept], stats.x1[kept], stats.y1[kept]
        areas = stats.area[kept]
        listed = np.lexsort((y0, x0, -areas))
        if limit is not None:
            listed = listed[:limit]  # vectorised: a noisy frame has ~10^5 components
        components = [
            {"bbox": [int(x0[j]), int(y0[j]), int(x1[j] - x0[j]), int(y1[j] - y0[j])],
             "area_px": int(areas[j])}
            for j in listed.tolist()
        ]  # fmt: skip
        box = (int(x0.min()), int(y0.min()), int(x1.max()), int(y1.max()))
        found[i] = _Found(kept_runs, components, int(kept.size), int(areas.sum()), level_sum, box)


def _levels_over(q: np.ndarray, runs: cc.Runs) -> int:
    """The sum of ``q`` over ``runs``."""
    if len(runs) == 0:
        return 0
    if len(runs) <= 256:
        return sum(int(q[a:b, c].sum()) for c, a, b in zip(runs.col, runs.y0, runs.y1, strict=True))
    # Many specks: one cumulative sum down the columns, read at each run's ends.
    column_sums = np.zeros((q.shape[0] + 1, q.shape[1]), np.int64)
    np.cumsum(q, axis=0, out=column_sums[1:])
    return int((column_sums[runs.y1, runs.col] - column_sums[runs.y0, runs.col]).sum())


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
    bands = [(x0, levels(probs)) for x0, probs in bands]
    thresholds = [mask_level(t) for t in spec.per_class("mask")]
    min_areas = [int(m) for m in spec.per_class("min_area")]
    classes = len(spec.classes)
    # Every class of every band in one pass; then per class, its bands left to right.
    found = _find(
        [probs[k] for _, probs in bands for k in range(classes)],
        thresholds * len(bands),
        min_areas * len(bands),
        MAX_COMPONENTS,
    )
    starts = [x0 for x0, _ in bands]
    by_band = [found[k::classes] for k in range(classes)]
    for k, name in enumerate(spec.classes):
        components: list[dict[str, Any]] = []
        runs: list[tuple[int, cc.Runs]] = []
        boxes: list[tuple[int, int, int, int]] = []
        count = area = level_sum = 0
        for x0, found in zip(starts, by_band[k], strict=True):
            if not found.count:
                continue
            for component in found.components:
                component["bbox"][0] += x0
            components += found.components
            count += found.count
            assert found.box is not None and found.runs is not None
            boxes.append((found.box[0] + x0, found.box[1], found.box[2] + x0, found.box[3]))
            area += found.area
            level_sum += found.level_sum
            runs.append((x0, found.runs))
        if not components:
            continue
        components.sort(key=_largest_first)
        height = runs[0][1].height
        defect: dict[str, Any] = {
            "class_id": k + 1,
            "name": name,
            "score": round(level_sum / PROB_SCALE / area, 4),
            "area_px": area,
            "mask_rle": "",
            "components": components[:MAX_COMPONENTS],
        }
        # Column-major pixel numbers: a band starts x0 full columns into the strip.
        pairs = [cc.flat_runs(r, start=x0 * height) for x0, r in runs]
        if sum(starts.size for starts, _ in pairs) <= MAX_MASK_RUNS:
            defect["mask_rle"] = " ".join(_rle_text(starts, lengths) for starts, lengths in pairs)
        else:
            defect["mask_rle"] = _box_rle(_union(boxes), height)
            defect["mask_truncated"] = True
        if count > MAX_COMPONENTS:
            defect["components_total"] = count
        defects.append(defect)
    return defects


def _rle_text(starts: np.ndarray, lengths: np.ndarray) -> str:
    """``edge.protocol.rle``'s text of runs given 0-based: 1-based ``start length`` pairs."""
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts + 1, lengths
    return " ".join(map(str, pairs.tolist()))


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
