from __future__ import annotations

import numpy as np

from edge.protocol import rle
from edge.vision.modelspec import ModelSpec
from edge.vision.postprocess import class_mask, defects_from_probs


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


def test_bands_give_the_defects_of_the_whole_strip() -> None:
    """Two apart bands of a strip that is 0 elsewhere: the same defects, in the same order."""
    from edge.vision.postprocess import defects_in_bands

    spec = ModelSpec(
        name="seg",
        role="segmenter",
        classes=("a", "b"),
        thresholds={"mask": (0.5, 0.5), "min_area": (2, 1)},
    )
    rng = np.random.default_rng(3)
    probs = np.zeros((2, 16, 40), np.float32)
    for x0, x1 in ((3, 11), (20, 33)):
        probs[:, :, x0:x1] = rng.random((2, 16, x1 - x0), dtype=np.float32)
    probs[0, 4:6, 8:10] = probs[0, 4:6, 24:26] = 0.99  # equal areas in both bands
    bands = [(3, probs[:, :, 3:11]), (20, probs[:, :, 20:33])]
    whole = defects_from_probs(probs, spec)
    assert defects_in_bands(bands, spec) == whole
    assert {d["class_id"] for d in whole} == {1, 2}
    areas = [c["area_px"] for c in whole[0]["components"]]
    assert areas == sorted(areas, reverse=True) and len(areas) > 2


def test_equal_components_go_left_to_right_then_top_to_bottom() -> None:
    probs = np.zeros((10, 12), np.float32)
    probs[6:8, 1:3] = probs[0:2, 8:10] = probs[0:2, 1:3] = 0.9
    _, components = class_mask(probs, 0.5, min_area=1)
    assert [c["bbox"][:2] for c in components] == [[1, 0], [1, 6], [8, 0]]


def test_a_noisy_frame_makes_a_bounded_event_that_still_counts_every_pixel() -> None:
    from edge.protocol import pack
    from edge.vision.postprocess import MAX_COMPONENTS, MAX_MASK_RUNS

    spec = ModelSpec(
        name="seg", role="segmenter", classes=("a",), thresholds={"mask": (0.5,), "min_area": (1,)}
    )
    probs = np.zeros((1, 256, 1600), np.float32)
    probs[0, 10:250:2, 100:1500:2] = 0.9  # 84,000 one-pixel specks: a camera glitch
    probs[0, 0:5, 0:40] = 0.8  # and one real defect, the largest
    (defect,) = defects_from_probs(probs, spec)
    assert defect["area_px"] == 120 * 700 + 200  # every pixel counted
    assert defect["components_total"] == 120 * 700 + 1
    assert len(defect["components"]) == MAX_COMPONENTS
    assert defect["components"][0] == {"bbox": [0, 0, 40, 5], "area_px": 200}
    assert defect["mask_truncated"] is True  # far more than MAX_MASK_RUNS runs
    box = rle.decode(defect["mask_rle"], 256, 1600)
    assert box[0:249, 0:1499].all() and box.sum() == 249 * 1499  # the filled bounding box
    assert len(pack({"defects": [defect]})) < 64 * 1024 + MAX_MASK_RUNS


def test_a_mask_within_the_run_budget_is_sent_exactly() -> None:
    spec = ModelSpec(
        name="seg", role="segmenter", classes=("a",), thresholds={"mask": (0.5,), "min_area": (1,)}
    )
    probs = np.zeros((1, 256, 1600), np.float32)
    probs[0, 20:40, 10:1590:3] = 0.9  # 527 stripes: listed up to the cap, mask exact
    (defect,) = defects_from_probs(probs, spec)
    assert "mask_truncated" not in defect and defect["components_total"] == 527
    np.testing.assert_array_equal(rle.decode(defect["mask_rle"], 256, 1600), probs[0] >= 0.5)


def test_runs_counts_what_encode_writes() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        mask = rng.random((17, 23)) < 0.3
        assert rle.runs(mask) == len(rle.encode(mask).split()) // 2
    assert rle.runs(np.zeros((3, 3), bool)) == 0 and rle.runs(np.ones((3, 3), bool)) == 1
