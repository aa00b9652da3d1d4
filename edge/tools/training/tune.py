"""``edge tune``: per-class thresholds for every stage, chosen on labelled strips.

Thresholds are chosen on the raw outputs of ``evaluate.run_models`` (models run once), in the
order the daemon applies them:

1. mask: the pixel threshold that maximises Dice on the images holding the class;
2. gate and min_area together, maximising the mean Dice over all images (what false specks
   on clean strips cost), applied as the daemon does: class k is kept only inside the tiles
   the classifier flagged for class k, then components smaller than min_area are dropped.
   Both remove false specks, but min_area also removes small true defects, so of the best
   pairs the smallest min_area wins, and of its gates the middle of the best range, for
   margin on both sides: lower segments clean tiles for nothing (the cascade's speed),
   higher starts to miss defects the labelled data did not happen to contain.

That per-class confinement is what the cascade does when classifier and segmenter have the
same classes; with other class lists the daemon segments a tile for every class once any
class passes, and these gates are a close approximation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.tools.training import metrics
from edge.tools.training.evaluate import ProgressCallback, StripOutputs
from edge.tools.training.labels import NUM_CLASSES

MASK_STEPS = np.round(np.arange(0.05, 1.0, 0.05), 2)
GATE_STEPS = np.round(np.arange(0.0, 1.0001, 0.05), 2)
MIN_AREAS = (0, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@dataclass(frozen=True)
class Choice:
    value: float
    score: float | None
    sweep: list[tuple[float, float | None]]


def _components_over(binary: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Component labels and areas of a mask (label 0 is the background)."""
    _, labels, stats, _ = cv2.connectedComponentsWithStats(binary.astype(np.uint8), connectivity=8)
    return labels, stats[:, cv2.CC_STAT_AREA]


def _gated(o: StripOutputs, k: int, gate: float) -> np.ndarray:
    """Pixels inside classifier windows whose class-k score reaches ``gate``."""
    inside = np.zeros(o.probs.shape[1:], bool)
    for w, score in zip(o.windows, o.tile_scores[:, k], strict=True):
        if score >= gate:
            inside[w.y : w.y + w.h, w.x : w.x + w.w] = True
    return inside


def tune_mask(outputs: list[StripOutputs], k: int) -> Choice:
    positives = [o for o in outputs if o.strip.mask_known[k] and o.strip.present[k]]
    if not positives:
        return Choice(0.5, None, [])
    sweep = []
    for t in MASK_STEPS:
        scores = [metrics.dice(o.strip.masks[k], o.probs[k] >= t) for o in positives]
        sweep.append((float(t), float(np.mean(scores))))
    best = max(sweep, key=lambda s: (s[1], -abs(s[0] - 0.5)))
    return Choice(best[0], best[1], sweep)


def tune_gate_and_area(
    outputs: list[StripOutputs],
    k: int,
    mask_threshold: float,
    on_strip: Callable[[], None] | None = None,
) -> tuple[Choice, Choice]:
    """The gate and min_area that, applied as the daemon does, give the best mean Dice.

    ``on_strip()`` is called after each strip's sweep (the slow part of ``edge tune``).
    """
    known = [o for o in outputs if o.strip.mask_known[k]]
    if not known or not any(o.strip.present[k] for o in known):
        return Choice(0.5, None, []), Choice(0, None, [])
    scores = np.zeros((len(GATE_STEPS), len(MIN_AREAS)))
    for o in known:
        truth = o.strip.masks[k].ravel()
        truth_total = int(truth.sum())
        above = o.probs[k] >= mask_threshold
        for i, gate in enumerate(GATE_STEPS):
            # Components of the confined mask: the daemon sees nothing outside flagged tiles.
            labels, areas = _components_over(above & _gated(o, k, float(gate)))
            flat = labels.ravel()
            pixels = np.flatnonzero(flat)
            pixel_area = areas[flat[pixels]]
            pixel_truth = truth[pixels]
            for j, min_area in enumerate(MIN_AREAS):
                kept = pixel_area >= max(min_area, 1)
                total = int(kept.sum()) + truth_total
                inter = int((kept & pixel_truth).sum())
                scores[i, j] += 1.0 if total == 0 else 2.0 * inter / total
        if on_strip is not None:
            on_strip()
    scores /= len(known)
    best = float(scores.max())
    j = int(np.flatnonzero((scores >= best - 1e-9).any(axis=0))[0])  # the smallest min_area
    plateau = np.flatnonzero(scores[:, j] >= best - 1e-9)
    i = int(plateau[len(plateau) // 2])
    by_gate = [(float(g), float(v)) for g, v in zip(GATE_STEPS, scores[:, j], strict=True)]
    by_area = [(float(a), float(v)) for a, v in zip(MIN_AREAS, scores[i], strict=True)]
    return Choice(float(GATE_STEPS[i]), best, by_gate), Choice(float(MIN_AREAS[j]), best, by_area)


def tune(outputs: list[StripOutputs], progress: ProgressCallback | None = None) -> dict[str, Any]:
    """Chosen thresholds per class, with every sweep for the report.

    ``progress(done, total)`` counts (class, strip) pairs swept: ``total`` is 4 x strips.
    """
    chosen: dict[str, list[float]] = {"gate": [], "mask": [], "min_area": []}
    details: dict[str, Any] = {}
    total = NUM_CLASSES * len(outputs)
    done = 0

    def on_strip() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    for k in range(NUM_CLASSES):
        mask = tune_mask(outputs, k)
        gate, area = tune_gate_and_area(outputs, k, mask.value, on_strip)
        if progress is not None and done < (k + 1) * len(outputs):
            done = (k + 1) * len(outputs)  # strips without labels for class k: nothing to sweep
            progress(done, total)
        chosen["mask"].append(mask.value)
        chosen["min_area"].append(int(area.value))
        chosen["gate"].append(gate.value)
        details[f"class_{k + 1}"] = {
            "mask": {"chosen": mask.value, "dice_on_positives": mask.score, "sweep": mask.sweep},
            "min_area": {"chosen": int(area.value), "mean_dice": area.score, "sweep": area.sweep},
            "gate": {"chosen": gate.value, "mean_dice": gate.score, "sweep": gate.sweep},
            "tuned": mask.score is not None,
        }
    return {"chosen": chosen, "per_class": details}
