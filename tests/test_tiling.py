"""Tiles cover a strip exactly with even overlap; the stitcher averages overlaps back together."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.vision.tiling import Stitcher, Window, cut_tile, tile_grid, tile_starts

# -- tile_starts ---------------------------------------------------------------------------------


def test_nominal_strip() -> None:
    assert tile_starts(1600, 256) == [0, 224, 448, 672, 896, 1120, 1344]
    assert tile_starts(256, 256) == [0]


@pytest.mark.parametrize(
    ("length", "tile", "count", "expected"),
    [
        (256, 256, 0, [0]),
        (100, 256, 0, [0]),  # smaller than a tile: one (padded) tile
        (100, 256, 3, [0]),  # a count cannot split what one tile already holds
        (512, 256, 0, [0, 256]),  # fits exactly: no overlap
        (513, 256, 0, [0, 128, 257]),
        (1600, 256, 8, [0, 192, 384, 576, 768, 960, 1152, 1344]),  # more than the fewest
        (1600, 256, 2, [0, 224, 448, 672, 896, 1120, 1344]),  # fewer than needed: ignored
        (1600, 1600, 0, [0]),
    ],
)
def test_tile_starts_cases(length: int, tile: int, count: int, expected: list[int]) -> None:
    assert tile_starts(length, tile, count) == expected


@settings(max_examples=400, deadline=None)
@given(st.integers(1, 5000), st.integers(1, 700), st.integers(0, 12))
def test_tile_starts_cover_evenly(length: int, tile: int, count: int) -> None:
    starts = tile_starts(length, tile, count)
    if length <= tile:
        assert starts == [0]
        return
    assert len(starts) == max(math.ceil(length / tile), count)
    assert starts[0] == 0
    assert starts[-1] == length - tile  # the last tile ends exactly at the strip's end
    gaps = np.diff(starts)
    assert (gaps >= 0).all()
    assert (gaps <= tile).all()  # consecutive tiles touch or overlap: no pixel is missed
    assert gaps.max() - gaps.min() <= 1  # even spacing, up to rounding
    if count == 0:
        assert (gaps > 0).all()  # the fewest tiles never repeat one


# -- tile_grid -----------------------------------------------------------------------------------


def test_nominal_grid() -> None:
    tiles = tile_grid(256, 1600, 256, 256)
    assert [t.x for t in tiles] == [0, 224, 448, 672, 896, 1120, 1344]
    assert all((t.y, t.h, t.w) == (0, 256, 256) for t in tiles)


def test_grid_is_row_major() -> None:
    tiles = tile_grid(300, 500, 200, 300)
    assert [(t.y, t.x) for t in tiles] == [(0, 0), (0, 200), (100, 0), (100, 200)]


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 400),
    st.integers(1, 1700),
    st.integers(1, 300),
    st.integers(1, 300),
    st.integers(0, 4),
    st.integers(0, 8),
)
def test_grid_covers_exactly(
    height: int, width: int, tile_h: int, tile_w: int, rows: int, columns: int
) -> None:
    tiles = tile_grid(height, width, tile_h, tile_w, rows, columns)
    covered = np.zeros((height, width), np.int32)
    for t in tiles:
        assert t.y >= 0 and t.y + t.h <= height
        assert t.x >= 0 and t.x + t.w <= width
        assert (t.h, t.w) == (min(tile_h, height), min(tile_w, width))
        covered[t.y : t.y + t.h, t.x : t.x + t.w] += 1
    assert (covered >= 1).all()


# -- cut_tile ------------------------------------------------------------------------------------


def test_cut_tile_is_a_view_when_it_fits() -> None:
    strip = np.arange(256 * 1600, dtype=np.uint32).reshape(256, 1600).astype(np.uint8)
    tile = tile_grid(256, 1600, 256, 256)[1]
    cut = cut_tile(strip, tile, 256, 256)
    assert cut.shape == (256, 256)
    assert np.shares_memory(cut, strip)
    np.testing.assert_array_equal(cut, strip[:, 224:480])


@pytest.mark.parametrize("channels", [None, 1, 3])
def test_small_strip_is_reflect_padded(channels: int | None) -> None:
    shape = (100, 300) if channels is None else (100, 300, channels)
    strip = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    tiles = tile_grid(100, 300, 256, 256)
    assert [(t.y, t.x, t.h, t.w) for t in tiles] == [(0, 0, 100, 256), (0, 44, 100, 256)]
    for t in tiles:
        cut = cut_tile(strip, t, 256, 256)
        assert cut.shape == (256, 256, *shape[2:])
        window = strip[:, t.x : t.x + 256]
        pad = [(0, 156), (0, 0)] + ([(0, 0)] if channels else [])
        # numpy's "reflect" does not repeat the edge pixel, as OpenCV's BORDER_REFLECT_101.
        np.testing.assert_array_equal(cut, np.pad(window, pad, mode="reflect"))


def test_reflect_pad_by_hand() -> None:
    strip = np.array([[1, 2, 3]], np.uint8)
    cut = cut_tile(strip, Window(0, 0, 1, 3), 2, 5)
    np.testing.assert_array_equal(cut, [[1, 2, 3, 2, 1], [1, 2, 3, 2, 1]])


def test_strip_smaller_than_tile_both_ways() -> None:
    strip = np.arange(12, dtype=np.uint8).reshape(3, 4)
    (tile,) = tile_grid(3, 4, 8, 8)
    assert (tile.h, tile.w) == (3, 4)
    cut = cut_tile(strip, tile, 8, 8)
    assert cut.shape == (8, 8)
    np.testing.assert_array_equal(cut[:3, :4], strip)
    np.testing.assert_array_equal(cut, np.pad(strip, [(0, 5), (0, 4)], mode="reflect"))


# -- Stitcher ------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.integers(257, 2400), st.sampled_from([64, 256]), st.integers(1, 4), st.data())
def test_stitcher_row_of_uint8_tiles_is_the_rounded_mean_of_what_covers_each_pixel(
    width: int, tile: int, classes: int, data
) -> None:
    """A run of neighbouring tiles across a band (the segmented tiles of a strip), stitched
    by the one-copy row path, against the definition: round-half-up mean per pixel."""
    windows = tile_grid(tile, width, tile, tile)
    first = data.draw(st.integers(0, len(windows) - 1))
    last = data.draw(st.integers(first, len(windows) - 1))
    run = windows[first : last + 1]
    x0, x1 = run[0].x, run[-1].x + run[-1].w
    rng = np.random.default_rng(width * tile + classes)
    maps = rng.integers(0, 256, (len(run), classes, tile, tile), dtype=np.uint8)
    stitcher = Stitcher(classes, tile, width, window=Window(0, x0, tile, x1 - x0))
    total = np.zeros((classes, tile, x1 - x0), np.int64)
    count = np.zeros((tile, x1 - x0), np.int64)
    for window, probs in zip(run, maps, strict=True):
        stitcher.add(window, probs)
        total[:, :, window.x - x0 : window.x - x0 + tile] += probs
        count[:, window.x - x0 : window.x - x0 + tile] += 1
    expected = (2 * total + count) // (2 * count)
    np.testing.assert_array_equal(stitcher.band(), expected.astype(np.uint8))


def test_stitcher_averages_overlaps() -> None:
    stitcher = Stitcher(channels=2, height=1, width=5)
    stitcher.add(Window(0, 0, 1, 3), np.array([[[1.0, 1.0, 1.0]], [[0.2, 0.2, 0.2]]]))
    stitcher.add(Window(0, 2, 1, 3), np.array([[[0.0, 0.0, 0.0]], [[0.6, 0.6, 0.6]]]))
    np.testing.assert_allclose(
        stitcher.result(),
        [[[1.0, 1.0, 0.5, 0.0, 0.0]], [[0.2, 0.2, 0.4, 0.6, 0.6]]],
        rtol=1e-6,
    )


def test_stitcher_three_way_overlap() -> None:
    stitcher = Stitcher(channels=1, height=2, width=2)
    stitcher.add(Window(0, 0, 2, 2), np.full((1, 2, 2), 0.9))
    stitcher.add(Window(0, 1, 2, 1), np.full((1, 2, 1), 0.3))
    stitcher.add(Window(1, 1, 1, 1), np.full((1, 1, 1), 0.0))
    np.testing.assert_allclose(stitcher.result()[0], [[0.9, 0.6], [0.9, 0.4]], rtol=1e-6)


def test_stitcher_leaves_uncovered_pixels_zero() -> None:
    stitcher = Stitcher(channels=1, height=2, width=6)
    stitcher.add(Window(0, 0, 2, 3), np.full((1, 2, 3), 0.8))
    expected = np.zeros((1, 2, 6))
    expected[:, :, :3] = 0.8
    np.testing.assert_allclose(stitcher.result(), expected, rtol=1e-6)


def test_stitcher_cuts_padding_off() -> None:
    """A padded tile's output is model-sized; only the part over the strip counts."""
    stitcher = Stitcher(channels=1, height=3, width=4)
    probs = np.full((1, 8, 8), 0.25)
    probs[:, 3:, :] = 1.0  # what the model said about the padding rows
    probs[:, :, 4:] = 1.0
    stitcher.add(Window(0, 0, 3, 4), probs)
    np.testing.assert_allclose(stitcher.result(), np.full((1, 3, 4), 0.25), rtol=1e-6)


def test_stitcher_nominal_strip_is_uniform() -> None:
    stitcher = Stitcher(channels=4, height=256, width=1600)
    for tile in tile_grid(256, 1600, 256, 256):
        stitcher.add(tile, np.full((4, 256, 256), 0.7, np.float32))
    np.testing.assert_allclose(stitcher.result(), 0.7, rtol=1e-6)


def test_stitcher_set_whole() -> None:
    stitcher = Stitcher(channels=2, height=3, width=4)
    probs = np.random.default_rng(0).random((2, 3, 4)).astype(np.float32)
    stitcher.set_whole(probs)
    np.testing.assert_array_equal(stitcher.result(), probs)


# -- Window.overlap ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (Window(0, 0, 10, 10), Window(5, 5, 10, 10), True),  # corners overlap
        (Window(0, 0, 10, 10), Window(2, 2, 3, 3), True),  # contained
        (Window(0, 0, 10, 10), Window(0, 0, 10, 10), True),  # identical
        (Window(0, 0, 10, 10), Window(0, 10, 10, 10), False),  # touching left/right edges
        (Window(0, 0, 10, 10), Window(10, 0, 10, 10), False),  # touching top/bottom edges
        (Window(0, 0, 10, 10), Window(10, 10, 5, 5), False),  # touching corners
        (Window(0, 0, 10, 10), Window(0, 9, 10, 10), True),  # one column in common
        (Window(0, 0, 10, 10), Window(20, 0, 5, 5), False),  # same columns, rows apart
        (Window(0, 0, 10, 10), Window(0, 20, 5, 5), False),  # same rows, columns apart
    ],
)
def test_overlap_is_positive_exactly_when_windows_share_pixels(
    a: Window, b: Window, expected: bool
) -> None:
    assert (a.overlap(b) > 0) is expected
    assert (b.overlap(a) > 0) is expected


def test_neighbouring_nominal_tiles_overlap() -> None:
    tiles = tile_grid(256, 1600, 256, 256)
    for left, right in itertools.pairwise(tiles):
        assert left.overlap(right) == 256 * 32
    assert tiles[0].overlap(tiles[2]) == 0


def test_overlap_and_covers_much_of() -> None:
    a, right_neighbour = Window(0, 0, 256, 256), Window(0, 224, 256, 256)
    assert a.overlap(right_neighbour) == 256 * 32
    assert not a.covers_much_of(right_neighbour)  # only the overlap margin is shared
    inside = Window(64, 64, 128, 128)
    assert a.covers_much_of(inside) and inside.covers_much_of(a)
    assert a.overlap(Window(0, 300, 10, 10)) == 0
    assert a.covers_much_of(a)


def test_nominal_segmented_runs_take_the_one_copy_row_path() -> None:
    from edge.vision.tiling import _row_step

    windows = tile_grid(256, 1600, 256, 256)
    band = Window(0, windows[2].x, 256, windows[5].x + 256 - windows[2].x)
    at = [(Window(0, w.x - band.x, 256, 256), None) for w in windows[2:6]]
    assert _row_step(at, band) == 224
    assert _row_step(at[::-1], band) is None  # out of order: the general path
