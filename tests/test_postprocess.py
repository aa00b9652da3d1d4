from __future__ import annotations

import numpy as np

from edge import rle
from edge.modelspec import ModelSpec
from edge.postprocess import class_mask, defects_from_probs


def test_small_components_are_removed_and_kept_ones_reported_largest_first() -> None:
    probs = np.zeros((20, 30), np.float32)
    probs[2:4, 2:4] = 0.9  # 4 px: noise
    probs[10:15, 5:25] = 0.8  # 100 px
    probs[0:3, 27:30] = 0.7  # 9 px
    mask, components = class_mask(probs, 0.5, min_area=5)
    assert components == [
        {"bbox": [5, 10, 20, 5], "area_px": 100},
        {"bbox": [27, 0, 3, 3], "area_px": 9},
    ]
    assert mask.sum() == 109 and not mask[2:4, 2:4].any()


def test_defects_use_per_class_thresholds_and_encode_full_frame_masks() -> None:
    spec = ModelSpec(
        name="seg",
        role="segmenter",
        classes=("a", "b"),
        thresholds={"mask": (0.5, 0.95), "min_area": (1, 1)},
    )
    probs = np.zeros((2, 8, 10), np.float32)
    probs[0, 1:3, 4:6] = 0.6
    probs[1, 5:7, 0:2] = 0.9  # below class b's 0.95
    (defect,) = defects_from_probs(probs, spec)
    assert (defect["class_id"], defect["name"], defect["area_px"]) == (1, "a", 4)
    assert defect["score"] == 0.6
    np.testing.assert_array_equal(rle.decode(defect["mask_rle"], 8, 10), probs[0] >= 0.5)
    assert defect["mask_rle"] == "34 2 42 2"  # column-major, 1-based: columns 4 and 5, rows 1-2
