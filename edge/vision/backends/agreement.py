"""How closely a reduced-precision model (FP16 ONNX, a TensorRT engine) follows the FP32 one.

Compared where the daemon acts on them: class probabilities after the model's activation, and
the segmenter's masks after its per-class thresholds. The tolerances are the acceptance bar
for an FP16 engine: scores within 1e-2 and thresholded masks with IoU >= 0.99.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.vision.modelspec import ModelSpec
from edge.vision.preprocess import InputAdapter, OutputAdapter

SCORE_TOLERANCE = 1e-2
MASK_IOU_MIN = 0.99


@dataclass(frozen=True)
class Agreement:
    role: str
    max_abs_diff: float  # largest probability difference
    mask_iou: float | None  # segmenters: IoU of the thresholded masks (1.0 if both empty)
    mask_pixels: int | None  # segmenters: pixels set in the reference masks

    @property
    def ok(self) -> bool:
        if self.role == "classifier":
            return self.max_abs_diff <= SCORE_TOLERANCE
        return self.mask_iou is not None and self.mask_iou >= MASK_IOU_MIN

    def __str__(self) -> str:
        if self.role == "classifier":
            return f"max |score diff| {self.max_abs_diff:.2g} (must be <= {SCORE_TOLERANCE:g})"
        return (
            f"mask IoU {self.mask_iou:.4f} over {self.mask_pixels} mask pixels (must be >= "
            f"{MASK_IOU_MIN}), max |probability diff| {self.max_abs_diff:.2g}"
        )


def probabilities(spec: ModelSpec, raw: np.ndarray) -> np.ndarray:
    adapter = OutputAdapter(spec)
    if spec.role == "classifier":
        return adapter.scores(raw)
    height, width = InputAdapter(spec).model_hw
    return adapter.float_maps(raw, height, width)


def compare(spec: ModelSpec, reference_raw: np.ndarray, raw: np.ndarray) -> Agreement:
    ref = probabilities(spec, reference_raw)
    got = probabilities(spec, raw)
    diff = float(np.max(np.abs(ref.astype(np.float64) - got))) if ref.size else 0.0
    if spec.role == "classifier":
        return Agreement("classifier", diff, None, None)
    thresholds = np.asarray(spec.per_class("mask"), np.float32)[None, :, None, None]
    ref_mask, got_mask = ref >= thresholds, got >= thresholds
    union = int(np.count_nonzero(ref_mask | got_mask))
    inter = int(np.count_nonzero(ref_mask & got_mask))
    iou = 1.0 if union == 0 else inter / union
    return Agreement("segmenter", diff, iou, int(np.count_nonzero(ref_mask)))


def make_batch(spec: ModelSpec, images: list[np.ndarray], size: int) -> np.ndarray:
    """Up to ``size`` model inputs (float32), cut from ``images`` as the daemon would cut them."""
    adapter = InputAdapter(spec)
    windows = [(image, w) for image in images for w in adapter.windows(*image.shape[:2])]
    batch = adapter.new_batch(min(size, len(windows)))
    for j, (image, window) in enumerate(windows[: len(batch)]):
        adapter.write(batch, j, adapter.pixels_for(image, window))
    return batch
