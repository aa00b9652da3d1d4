"""Components on column runs are exactly OpenCV's 8-connected components, and give the RLE."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.protocol import rle
from edge.vision import components as cc


def opencv_components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    """(area, x0, y0, x1, y1) of each component, sorted: what OpenCV finds."""
    count, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return sorted(
        (int(a), int(x), int(y), int(x + w), int(y + h)) for x, y, w, h, a in stats[1:count]
    )


def run_components(mask: np.ndarray) -> list[tuple[int, int, int, int, int]]:
    runs = cc.column_runs(mask)
    count, labels = cc.label(runs)
    s = cc.measure(runs, labels, count)
    return sorted(zip(*(v.tolist() for v in (s.area, s.x0, s.y0, s.x1, s.y1)), strict=True))


@pytest.mark.parametrize("density", [0.05, 0.3, 0.5, 0.7, 0.95])
def test_random_masks_give_opencvs_components(density: float) -> None:
    rng = np.random.default_rng(int(density * 100))
    for shape in ((1, 1), (1, 40), (40, 1), (17, 23), (64, 300)):
        mask = rng.random(shape) < density
        assert run_components(mask) == opencv_components(mask), shape


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_any_mask_gives_opencvs_components_and_its_rle(
    height: int, width: int, seed: int, density: float
) -> None:
    mask = np.random.default_rng(seed).random((height, width)) < density
    assert run_components(mask) == opencv_components(mask)
    runs = cc.column_runs(mask)
    starts, lengths = cc.flat_runs(runs, start=0)
    text = " ".join(f"{s + 1} {n}" for s, n in zip(starts.tolist(), lengths.tolist(), strict=True))
    assert text == rle.encode(mask)
    np.testing.assert_array_equal(cc.paint(runs, width), mask)


@settings(max_examples=80, deadline=None)
@given(st.integers(1, 12), st.integers(1, 10), st.integers(0, 2**32 - 1), st.floats(0, 1))
def test_masks_of_repeated_columns_give_opencvs_components(
    height: int, columns: int, seed: int, density: float
) -> None:
    """Columns that repeat the one before are labelled as it (components.label): the same
    components as OpenCV's, whether the repeats run on, stop at a gap, or change by a row."""
    rng = np.random.default_rng(seed)
    base = rng.random((height, columns)) < density
    mask = np.repeat(base, rng.integers(1, 6, columns), axis=1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cc, "REPEATS_FROM", 0)  # looked for in small masks too
        assert run_components(mask) == opencv_components(mask)
        runs = cc.column_runs(mask)
        count, labels = cc.label(runs)
    assert labels.size == len(runs) and (count == 0 or labels.max() == count - 1)


def test_a_saturated_frame_is_labelled_as_one_column() -> None:
    mask = np.ones((256, 1600), bool)
    mask[:, 700] = False  # two blocks of identical columns
    mask[100, 1200] = False  # one column different from its neighbours
    runs = cc.column_runs(mask)
    kept, stand_in = cc._without_repeats(runs)
    assert len(runs) == 1600 and len(kept) == 5  # col 0, 701, 1200 (two runs), 1201
    # Each run stands in for by a kept run of the same rows.
    np.testing.assert_array_equal(kept.y0[stand_in], runs.y0)
    np.testing.assert_array_equal(kept.y1[stand_in], runs.y1)
    assert run_components(mask) == opencv_components(mask)


def test_diagonal_neighbours_are_one_component_and_a_gap_makes_two() -> None:
    mask = np.zeros((4, 4), bool)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = True  # a diagonal: one 8-connected component
    mask[0, 3] = True  # apart from it by a column gap and a row gap
    assert run_components(mask) == [(1, 3, 0, 4, 1), (3, 0, 0, 3, 3)]


def test_a_full_strip_is_one_run_per_column_and_one_rle_run() -> None:
    mask = np.ones((256, 1600), bool)
    runs = cc.column_runs(mask)
    assert len(runs) == 1600
    assert run_components(mask) == [(256 * 1600, 0, 0, 1600, 256)]
    starts, lengths = cc.flat_runs(runs, start=5)
    assert starts.tolist() == [5] and lengths.tolist() == [256 * 1600]
