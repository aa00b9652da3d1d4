"""How closely a reduced-precision model (FP16 ONNX, a TensorRT engine, OpenVINO in bf16)
follows the FP32 one.

Compared where the daemon acts on them: class probabilities after the model's activation, and
the segmenter's masks after its per-class thresholds. The tolerances are the acceptance bar
for an FP16 engine (scores within 1e-2, thresholded masks with IoU >= 0.99) and for ``auto``'s
choice of OpenVINO (the same for scores, masks IoU >= 0.98). Raw outputs (logits) and fused ones (``build_engine.graph``:
probabilities, a segmenter's as uint8 round(255 p)) are both compared as the daemon reads them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from build_engine.graph import PROB_SCALE
from edge.vision.backends.base import Backend
from edge.vision.modelspec import ModelSpec
from edge.vision.preprocess import InputAdapter, OutputAdapter, mask_level

SCORE_TOLERANCE = 1e-2
MASK_IOU_MIN = 0.99
# OpenVINO's bar: bf16 (8 bits of mantissa against FP16's 11) moves mask edges further; what
# it must still meet against FP32 for auto to serve a segmenter on it.
OPENVINO_MASK_IOU_MIN = 0.98


@dataclass(frozen=True)
class Agreement:
    role: str
    max_abs_diff: float  # largest probability difference
    mask_iou: float | None  # segmenters: IoU of the thresholded masks (1.0 if both empty)
    mask_pixels: int | None  # segmenters: pixels set in the reference masks
    mask_iou_min: float = MASK_IOU_MIN  # the bar this agreement is held to

    @property
    def ok(self) -> bool:
        if self.role == "classifier":
            return self.max_abs_diff <= SCORE_TOLERANCE
        return self.mask_iou is not None and self.mask_iou >= self.mask_iou_min

    def __str__(self) -> str:
        if self.role == "classifier":
            return f"max |score diff| {self.max_abs_diff:.2g} (must be <= {SCORE_TOLERANCE:g})"
        return (
            f"mask IoU {self.mask_iou:.4f} over {self.mask_pixels} mask pixels (must be >= "
            f"{self.mask_iou_min:g}), max |probability diff| {self.max_abs_diff:.2g}"
        )


def probabilities(spec: ModelSpec, raw: np.ndarray, fused: bool = False) -> np.ndarray:
    """Scores (float32) or maps at the model's size: float32 from raw logits, uint8
    round(255 p) from a fused model."""
    adapter = OutputAdapter(spec, fused=fused)
    if spec.role == "classifier":
        return adapter.scores(raw)
    height, width = InputAdapter(spec).model_hw
    if fused:
        return adapter.maps(raw, height, width)
    return adapter.float_maps(raw, height, width)


def _masks(spec: ModelSpec, maps: np.ndarray) -> np.ndarray:
    """The maps after the per-class thresholds, as the daemon applies them to either form."""
    thresholds = spec.per_class("mask")
    if maps.dtype == np.uint8:
        levels = np.asarray([mask_level(t) for t in thresholds], np.int16)
        return maps >= levels[None, :, None, None]
    return maps >= np.asarray(thresholds, np.float32)[None, :, None, None]


def compare(
    spec: ModelSpec, reference_raw: np.ndarray, raw: np.ndarray, *, fused: bool = False
) -> Agreement:
    """``fused``: both outputs come from fused models (the same form either way)."""
    return AgreementCounts(spec).add(reference_raw, raw, fused).agreement()


class AgreementCounts:
    """What an Agreement sums over chunks: the largest difference and the masks' pixels."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec
        self.worst, self.shared, self.either, self.reference = 0.0, 0, 0, 0

    def add(self, reference_raw: np.ndarray, raw: np.ndarray, fused: bool) -> AgreementCounts:
        ref = probabilities(self.spec, reference_raw, fused)
        got = probabilities(self.spec, raw, fused)
        if ref.size:
            scale = PROB_SCALE if ref.dtype == np.uint8 else 1
            diff = float(np.max(np.abs(ref.astype(np.float64) - got))) / scale
            self.worst = max(self.worst, diff)
        if self.spec.role == "segmenter":
            ref_mask, got_mask = _masks(self.spec, ref), _masks(self.spec, got)
            self.either += int(np.count_nonzero(ref_mask | got_mask))
            self.shared += int(np.count_nonzero(ref_mask & got_mask))
            self.reference += int(np.count_nonzero(ref_mask))
        return self

    def agreement(self, mask_iou_min: float = MASK_IOU_MIN) -> Agreement:
        if self.spec.role == "classifier":
            return Agreement("classifier", self.worst, None, None)
        iou = 1.0 if self.either == 0 else self.shared / self.either
        return Agreement("segmenter", self.worst, iou, self.reference, mask_iou_min)


def check_fused(
    spec: ModelSpec,
    reference: Backend,
    candidate: Backend,
    images: Sequence[np.ndarray],
    mask_iou_min: float = MASK_IOU_MIN,
) -> Agreement:
    """Both fused backends on every window of ``images``, one chunk at a time (memory stays
    one chunk's outputs), as one Agreement: the largest difference, the masks' total IoU."""
    adapter = InputAdapter(spec)
    windows = [(image, w) for image in images for w in adapter.windows(*image.shape[:2])]
    size = max(1, min(reference.max_batch, candidate.max_batch))
    counts = AgreementCounts(spec)
    batch = adapter.new_batch(size, fused=True)
    for start in range(0, len(windows), size):
        chunk = windows[start : start + size]
        for j, (image, window) in enumerate(chunk):
            batch[j] = adapter.pixels_for(image, window)
        inputs = batch[: len(chunk)]
        counts.add(reference.infer(inputs), candidate.infer(inputs), fused=True)
    return counts.agreement(mask_iou_min)


def make_batch(spec: ModelSpec, images: list[np.ndarray], size: int) -> np.ndarray:
    """Up to ``size`` model inputs (float32), cut from ``images`` as the daemon would cut them."""
    adapter = InputAdapter(spec)
    windows = [(image, w) for image in images for w in adapter.windows(*image.shape[:2])]
    batch = adapter.new_batch(min(size, len(windows)))
    for j, (image, window) in enumerate(windows[: len(batch)]):
        adapter.write(batch, j, adapter.pixels_for(image, window))
    return batch
