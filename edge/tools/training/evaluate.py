"""``edge eval``: how good a model repository is on labelled strips, beside "predict nothing".

Two views of the same strips:

- *deployed*: the daemon's own cascade with the repository's thresholds (gate, mask, min area),
  post-processed exactly as events are; its masks give the Dice numbers.
- *raw*: every tile classified and every tile segmented, before thresholds, so the classifier
  can be judged by ROC AUC and ``edge tune`` can sweep thresholds without re-running models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sized
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge.tools.training import metrics
from edge.tools.training.labels import NUM_CLASSES, LabelledStrip
from edge.tools.training.samples import PRESENT_PIXELS
from edge.vision.cascade import Cascade
from edge.vision.postprocess import class_mask
from edge.vision.tiling import Stitcher, Window


@dataclass
class StripOutputs:
    """One strip through the models: raw outputs and the deployed cascade's masks."""

    strip: LabelledStrip
    windows: list[Window]  # classifier windows
    tile_scores: np.ndarray  # windows x 4
    probs: np.ndarray  # 4 x H x W, float16: every segmenter window, stitched
    deployed: np.ndarray  # bool, 4 x H x W: masks the daemon would publish


# Told (strips done, strips in all, or None when the iterable has no length) after each strip.
ProgressCallback = Callable[[int, int | None], None]


def run_models(
    cascade: Cascade,
    strips: Iterable[LabelledStrip],
    progress: ProgressCallback | None = None,
) -> list[StripOutputs]:
    outputs = []
    spec = cascade.segmenter.spec
    total = len(strips) if isinstance(strips, Sized) else None
    for strip in strips:
        image = strip.image
        work, scores = cascade.classify([image])
        every = cascade.segment_work([image], [[w for _, w in work]])
        stitcher = Stitcher(spec.num_classes, *image.shape[:2])
        for start, maps in cascade.segmenter.probability_maps([image], every):
            for j, (_, window) in enumerate(every[start : start + maps.shape[0]]):
                stitcher.add(window, maps[j])
        result = cascade.run([image])[0]
        deployed = np.zeros((NUM_CLASSES, *image.shape[:2]), bool)
        if result.probs is not None:
            for k in range(NUM_CLASSES):
                deployed[k], _ = class_mask(
                    result.probs[k],
                    spec.per_class("mask")[k],
                    int(spec.per_class("min_area")[k]),
                )
        outputs.append(
            StripOutputs(
                strip=strip,
                windows=[w for _, w in work],
                tile_scores=scores,
                probs=stitcher.result().astype(np.float16),
                deployed=deployed,
            )
        )
        if progress is not None:
            progress(len(outputs), total)
    return outputs


def tile_labels(out: StripOutputs) -> tuple[np.ndarray, np.ndarray]:
    """Per classifier window and class: present, and whether that is known (see samples.py)."""
    strip = out.strip
    labels = np.zeros((len(out.windows), NUM_CLASSES), bool)
    known = np.zeros_like(labels)
    for i, w in enumerate(out.windows):
        pixels = strip.masks[:, w.y : w.y + w.h, w.x : w.x + w.w].reshape(NUM_CLASSES, -1).sum(1)
        labels[i] = pixels >= PRESENT_PIXELS
        ambiguous = (pixels > 0) & (pixels < PRESENT_PIXELS)
        known[i] = ~ambiguous & strip.mask_known
    return labels, known


def classifier_report(outputs: list[StripOutputs], gates: list[float]) -> dict[str, Any]:
    per_class: dict[str, Any] = {}
    tiles = [tile_labels(o) for o in outputs]
    for k in range(NUM_CLASSES):
        t_labels = np.concatenate([lab[:, k][kn[:, k]] for lab, kn in tiles])
        t_scores = np.concatenate(
            [o.tile_scores[:, k][kn[:, k]] for o, (_, kn) in zip(outputs, tiles, strict=True)]
        )
        s_labels = np.array([o.strip.present[k] for o in outputs])
        s_scores = np.array([o.tile_scores[:, k].max() for o in outputs])
        at_gate = metrics.confusion(t_labels, t_scores >= gates[k])
        per_class[f"class_{k + 1}"] = {
            "tile_auc": metrics.roc_auc(t_labels, t_scores),
            "strip_auc": metrics.roc_auc(s_labels, s_scores),
            "gate": gates[k],
            "tiles": {"positive": int(t_labels.sum()), "negative": int((~t_labels).sum())},
            "tile_confusion_at_gate": at_gate.as_dict(),
            "strip_confusion_at_gate": metrics.confusion(s_labels, s_scores >= gates[k]).as_dict(),
            "baseline_predict_nothing": {
                "tile_auc": 0.5 if t_labels.any() and (~t_labels).any() else None,
                **metrics.confusion(t_labels, np.zeros_like(t_labels)).as_dict(),
            },
        }
    aucs = [c["tile_auc"] for c in per_class.values() if c["tile_auc"] is not None]
    return {
        "per_class": per_class,
        "mean_tile_auc": float(np.mean(aucs)) if aucs else None,
    }


def segmentation_report(outputs: list[StripOutputs]) -> dict[str, Any]:
    per_class: dict[str, Any] = {}
    all_pairs, baseline_pairs = [], []
    for k in range(NUM_CLASSES):
        positives, pos_baseline, pairs = [], [], []
        for o in outputs:
            if not o.strip.mask_known[k]:
                continue
            truth = o.strip.masks[k]
            score = metrics.dice(truth, o.deployed[k])
            empty_score = metrics.dice(truth, np.zeros_like(truth))
            pairs.append(score)
            all_pairs.append(score)
            baseline_pairs.append(empty_score)
            if o.strip.present[k]:
                positives.append(score)
                pos_baseline.append(empty_score)
        per_class[f"class_{k + 1}"] = {
            "dice_on_positives": _mean(positives),
            "positive_images": len(positives),
            "mean_dice_all_images": _mean(pairs),
            "baseline_predict_nothing": {"dice_on_positives": _mean(pos_baseline)},
        }
    return {
        "per_class": per_class,
        "kaggle_mean_dice": _mean(all_pairs),
        "baseline_predict_nothing": {"kaggle_mean_dice": _mean(baseline_pairs)},
        "pairs": len(all_pairs),
    }


def evaluate(
    cascade: Cascade,
    strips: list[LabelledStrip],
    progress: ProgressCallback | None = None,
) -> tuple[dict[str, Any], list[StripOutputs]]:
    outputs = run_models(cascade, strips, progress)
    report = {
        "models": cascade.model_ids,
        "images": [s.image_id for s in strips],
        "classifier": classifier_report(outputs, cascade.classifier.spec.per_class("gate")),
        "segmentation": segmentation_report(outputs),
    }
    return report, outputs


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None
