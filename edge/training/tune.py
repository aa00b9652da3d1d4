"""``edge tune``: per-class thresholds for every stage, chosen on labelled strips.

Stages are tuned one after another on the raw outputs of ``evaluate.run_models`` (models run
once):

1. mask: the pixel threshold that maximises Dice on the images holding the class;
2. min_area: the smallest component kept, maximising the mean Dice over all images (what
   removes false specks on clean strips);
3. gate: the classifier threshold that maximises the same mean Dice when pixels outside the
   tiles it flags are dropped. Often a whole range of gates ties (the mask stage already
   removed what the gate would); of that range the middle, so the gate has margin on both
   sides: lower segments clean tiles for nothing (the cascade's speed), higher starts to miss
   defects the labelled data did not happen to contain.

The gate is swept per class, as if each class gated its own tiles; the daemon segments a tile
when any class passes, so it segments at least what the sweep assumed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edge.training import metrics
from edge.training.evaluate import StripOutputs
from edge.training.labels import NUM_CLASSES

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


def tune_min_area(outputs: list[StripOutputs], k: int, mask_threshold: float) -> Choice:
    known = [o for o in outputs if o.strip.mask_known[k]]
    if not known or not any(o.strip.present[k] for o in known):
        return Choice(0, None, [])
    labelled = [(o, *_components_over(o.probs[k] >= mask_threshold)) for o in known]
    sweep = []
    for area in MIN_AREAS:
        scores = []
        for o, labels, areas in labelled:
            keep = areas >= max(area, 1)
            keep[0] = False
            scores.append(metrics.dice(o.strip.masks[k], keep[labels]))
        sweep.append((float(area), float(np.mean(scores))))
    best = max(sweep, key=lambda s: (s[1], -s[0]))
    return Choice(best[0], best[1], sweep)


def tune_gate(outputs: list[StripOutputs], k: int, mask_threshold: float, min_area: int) -> Choice:
    known = [o for o in outputs if o.strip.mask_known[k]]
    if not known or not any(o.strip.present[k] for o in known):
        return Choice(0.5, None, [])
    masks = []
    for o in known:
        labels, areas = _components_over(o.probs[k] >= mask_threshold)
        keep = areas >= max(min_area, 1)
        keep[0] = False
        masks.append(keep[labels])
    sweep = []
    for gate in GATE_STEPS:
        scores = [
            metrics.dice(o.strip.masks[k], mask & _gated(o, k, float(gate)))
            for o, mask in zip(known, masks, strict=True)
        ]
        sweep.append((float(gate), float(np.mean(scores))))
    best_score = max(s for _, s in sweep)
    plateau = [g for g, s in sweep if s >= best_score - 1e-9]
    return Choice(plateau[len(plateau) // 2], best_score, sweep)


def tune(outputs: list[StripOutputs]) -> dict[str, Any]:
    """Chosen thresholds per class, with every sweep for the report."""
    chosen: dict[str, list[float]] = {"gate": [], "mask": [], "min_area": []}
    details: dict[str, Any] = {}
    for k in range(NUM_CLASSES):
        mask = tune_mask(outputs, k)
        area = tune_min_area(outputs, k, mask.value)
        gate = tune_gate(outputs, k, mask.value, int(area.value))
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
