"""The bench's agreement mode: the defects the bench's backend finds against FP32 ONNX Runtime's,
strip by strip, through the whole cascade (gating, stitching, thresholds, min-area).

What a plant engineer asks of a faster backend (OpenVINO in bf16, a TensorRT engine in FP16):
the same strips defective, and masks that overlap. Counted per class over every strip of the
pool (shared pixels / pixels of either), per strip and class pair, and per strip verdict
(defective or clean). One strip at a time, so memory stays one strip's masks.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from edge.protocol import rle
from edge.tools.bench.workload import StripPool
from edge.vision.cascade import Cascade
from edge.vision.postprocess import strip_defects

PAIR_IOU = 0.98  # the bar a strip's class is counted against (issue 16's)
WORST_PAIRS = 5


def strip_masks(cascade: Cascade, image: np.ndarray) -> np.ndarray:
    """K x H x W bool: each class's defect pixels on the strip, as the events would carry them."""
    (result,) = cascade.run([image])
    spec = cascade.segmenter.spec
    masks = np.zeros((spec.num_classes, *image.shape[:2]), bool)
    for defect in strip_defects(result, spec):
        masks[defect["class_id"] - 1] |= rle.decode(defect["mask_rle"], *image.shape[:2])
    return masks


def agreement_section(
    models: Path,
    backend: str,
    candidate: Cascade,
    pool: StripPool,
    loaded: list[Cascade],
    update: Callable[[float, str], None],
) -> dict[str, Any]:
    """The bench's cascade against FP32 ONNX Runtime's (loaded here, put on ``loaded`` to be
    closed); skipped when the bench's backend is ONNX Runtime itself."""
    if backend == "onnxruntime":
        update(1.0, "skipped")
        return {"skipped": "the bench's backend is onnxruntime, the reference itself"}
    reference = Cascade.load(
        models, "onnxruntime", max_batch=candidate.classifier.backend.max_batch
    )
    loaded.append(reference)
    return run_agreement(reference, candidate, pool, update)


def run_agreement(
    reference: Cascade,
    candidate: Cascade,
    pool: StripPool,
    update: Callable[[float, str], None] | None = None,
) -> dict[str, Any]:
    """The agreement section of the bench report (see the module's docstring)."""
    names = list(candidate.segmenter.spec.classes)
    shared = np.zeros(len(names), np.int64)
    either = np.zeros(len(names), np.int64)
    pairs: list[tuple[float, int, int, int]] = []  # (IoU, strip, class index, pixels of either)
    same_verdict = 0
    started = time.monotonic()
    for index, image in enumerate(pool.images):
        want, got = strip_masks(reference, image), strip_masks(candidate, image)
        same_verdict += bool(want.any()) == bool(got.any())
        for k in range(len(names)):
            both = int(np.count_nonzero(want[k] & got[k]))
            union = int(np.count_nonzero(want[k] | got[k]))
            shared[k] += both
            either[k] += union
            if union:
                pairs.append((both / union, index, k, union))
        if update is not None:
            update((index + 1) / len(pool), f"{index + 1}/{len(pool)} strips")
    ious = {n: (None if e == 0 else round(float(s / e), 4)) for n, s, e in zip(names, shared, either, strict=True)}  # fmt: skip
    measured = [v for v in ious.values() if v is not None]
    pairs.sort()
    at_bar = sum(1 for p in pairs if p[0] >= PAIR_IOU)
    return {
        "reference": {"backend": "onnxruntime", "precision": "FP32", **_describe(reference)},
        "candidate": _describe(candidate),
        "strips": len(pool),
        "same_verdict": same_verdict,
        "same_verdict_share": round(same_verdict / len(pool), 4) if len(pool) else None,
        "per_class": {
            n: {"iou": ious[n], "shared_px": int(s), "either_px": int(e)}
            for n, s, e in zip(names, shared, either, strict=True)
        },
        "min_class_iou": min(measured) if measured else None,
        "strip_class_pairs": len(pairs),
        "pairs_at_iou": {
            "iou": PAIR_IOU,
            "count": at_bar,
            "share": round(at_bar / len(pairs), 4) if pairs else None,
        },
        "worst_pairs": [
            {"strip": i, "class": names[k], "iou": round(iou, 4), "either_px": px}
            for iou, i, k, px in pairs[:WORST_PAIRS]
        ],
        "iou_is": "per class: shared defect pixels / pixels either backend marked, summed over "
        "every strip; per pair: the same for one strip and class",
        "seconds": round(time.monotonic() - started, 1),
    }


def _describe(cascade: Cascade) -> dict[str, dict[str, str]]:
    return {
        "classifier": cascade.classifier.backend.describe(),
        "segmenter": cascade.segmenter.backend.describe(),
    }
