"""Cutting strips into model-sized tiles and stitching per-tile outputs back to the full frame.

Tiles overlap evenly so they cover the strip exactly (no padding on a 256x1600 strip: 7 tiles of
256 starting every 224 px). A strip smaller than a tile along an axis is padded by reflection.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True, slots=True)
class Window:
    """A tile's window on the strip: rows y:y+h, columns x:x+w (h, w clipped to the strip)."""

    y: int
    x: int
    h: int
    w: int

    @property
    def area(self) -> int:
        return self.h * self.w

    def overlap(self, other: Window) -> int:
        """Pixels the two windows share."""
        dy = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        dx = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        return max(dy, 0) * max(dx, 0)

    def covers_much_of(self, other: Window) -> bool:
        """True when the windows share at least half of the smaller one.

        The cascade sends a segmenter window through when it covers much of a flagged classifier
        window (or the other way round): a neighbour that only shares the tiles' overlap margin
        is not sent, a small window inside a flagged one is.
        """
        return 2 * self.overlap(other) >= min(self.area, other.area)


def tile_starts(length: int, tile: int, count: int = 0) -> list[int]:
    """Start offsets of ``count`` tiles (0: the fewest) spread evenly to cover ``length``."""
    if length <= tile:
        return [0]
    n = max(math.ceil(length / tile), count)
    if n == 1:
        return [0]
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def tile_grid(
    height: int, width: int, tile_h: int, tile_w: int, rows: int = 0, columns: int = 0
) -> list[Window]:
    """Row-major tiles covering a height x width strip."""
    return [
        Window(y, x, min(tile_h, height), min(tile_w, width))
        for y in tile_starts(height, tile_h, rows)
        for x in tile_starts(width, tile_w, columns)
    ]


def cut_tile(image: np.ndarray, tile: Window, tile_h: int, tile_w: int) -> np.ndarray:
    """The tile's pixels at the model's size: a view when it fits, a reflect-padded copy if not."""
    window = image[tile.y : tile.y + tile.h, tile.x : tile.x + tile.w]
    pad_y, pad_x = tile_h - window.shape[0], tile_w - window.shape[1]
    if pad_y == 0 and pad_x == 0:
        return window
    return cv2.copyMakeBorder(window, 0, pad_y, 0, pad_x, cv2.BORDER_REFLECT_101).reshape(
        (tile_h, tile_w, *window.shape[2:])
    )


class Stitcher:
    """Averages per-tile probability maps (C x h x w) into one C x H x W map for a strip.

    Maps are float probabilities, or uint8 ``round(255 * p)`` as fused segmenters return them
    (``build_engine.graph``); the result has their dtype, and uint8 averages are rounded half
    up. Pixels no segmented tile covered stay 0: the classifier judged them clean. Only
    ``window`` (default: the whole strip) is kept, the part the tiles to come will cover, so a
    strip with one flagged tile costs one tile's worth of arithmetic, not the strip's.

    Tiles are copied into place and only where they overlap is anything summed: on a strip of
    7 tiles across, 6 strips of 32 columns, not the strip's 400,000 pixels per class. A window
    exactly one tile fills needs no arithmetic at all: ``band`` is that tile's map.
    """

    def __init__(
        self, channels: int, height: int, width: int, window: Window | None = None
    ) -> None:
        self.shape = (channels, height, width)
        self.window = Window(0, 0, height, width) if window is None else window
        self._tiles: list[tuple[Window, np.ndarray]] = []  # in the window's coordinates
        self._whole: np.ndarray | None = None

    @property
    def whole(self) -> bool:
        return self.window == Window(0, 0, *self.shape[1:])

    def add(self, tile: Window, probs: np.ndarray) -> None:
        """``probs`` is C x tile_h x tile_w at the model's tile size; padding is cut off.

        The tile must lie inside the window. ``probs`` is kept, not copied, until ``band``:
        the caller must not change it meanwhile.
        """
        at = Window(tile.y - self.window.y, tile.x - self.window.x, tile.h, tile.w)
        self._tiles.append((at, probs[:, : tile.h, : tile.w]))

    def set_whole(self, probs: np.ndarray) -> None:
        if not self.whole:
            raise ValueError("set_whole needs a stitcher whose window is the whole strip")
        self._whole, self._tiles = probs, []

    def band(self) -> np.ndarray:
        """The averaged maps over ``window`` only (C x window.h x window.w).

        A new array, or the one tile's own map when a single tile filled the window.
        """
        if self._whole is not None:
            return self._whole
        w = self.window
        tiles = self._tiles
        if len(tiles) == 1 and tiles[0][0] == Window(0, 0, w.h, w.w):
            return tiles[0][1]
        dtype = tiles[0][1].dtype if tiles else np.dtype(np.float32)
        shape = (self.shape[0], w.h, w.w)
        step = _row_step(tiles, w)
        if step is not None and np.issubdtype(dtype, np.integer):
            return _stitch_row(tiles, step, shape, dtype)
        # Columns of full-height tiles that leave no gap: every pixel is written below.
        out = np.empty(shape, dtype) if _fills(tiles, w) else np.zeros(shape, dtype)
        for at, probs in tiles:
            out[:, at.y : at.y + at.h, at.x : at.x + at.w] = probs
        for region in _overlaps([at for at, _ in tiles]):
            out[:, region.y : region.y + region.h, region.x : region.x + region.w] = _mean_over(
                region, tiles, out.dtype
            )
        return out

    def result(self) -> np.ndarray:
        """The whole strip's C x H x W map, a new array."""
        band = self.band()
        out = np.zeros(self.shape, band.dtype)
        w = self.window
        # Outside the window nothing was added: 0.
        out[:, w.y : w.y + w.h, w.x : w.x + w.w] = band
        return out


def _row_step(tiles: list[tuple[Window, np.ndarray]], window: Window) -> int | None:
    """The step between tiles that lie left to right in one full-height row, evenly spaced,
    of one width, from the window's first column to its last, each overlapping only its
    neighbours (a segmented run of a 256 x 1600 strip's tiles); None for any other layout."""
    if len(tiles) < 2:
        return None
    width = tiles[0][0].w
    step = tiles[1][0].x - tiles[0][0].x
    if step <= 0 or 2 * step < width or step > width:
        return None
    for n, (at, _) in enumerate(tiles):
        if at.y != 0 or at.h != window.h or at.w != width or at.x != n * step:
            return None
    return step if tiles[-1][0].x + width == window.w else None


def _stitch_row(
    tiles: list[tuple[Window, np.ndarray]], step: int, shape: tuple[int, ...], dtype: np.dtype
) -> np.ndarray:
    """``band`` for a ``_row_step`` layout of integer maps: each tile's own columns copied
    once, each overlap the rounded mean of its two tiles (as ``_mean_over``), written once."""
    out = np.empty(shape, dtype)
    width = tiles[0][0].w
    shared = width - step
    last = len(tiles) - 1
    for n, (at, probs) in enumerate(tiles):
        lo, hi = (shared if n else 0), (step if n < last else width)
        out[:, :, at.x + lo : at.x + hi] = probs[:, :, lo:hi]
    if shared:
        total = np.empty((*shape[:2], shared), np.uint16)
        for (_, left), (at, right) in itertools.pairwise(tiles):
            out[:, :, at.x : at.x + shared] = _rounded_mean(
                left[:, :, step:], right[:, :, :shared], total
            )
    return out


def _rounded_mean(a: np.ndarray, b: np.ndarray, total: np.ndarray) -> np.ndarray:
    """(a + b + 1) // 2 of two uint8 maps, pixel by pixel (round half up), into the uint16
    ``total`` of their shape, which is returned."""
    np.add(a, b, out=total, dtype=np.uint16)
    total += 1
    total >>= 1
    return total


def _fills(tiles: list[tuple[Window, np.ndarray]], window: Window) -> bool:
    """Whether full-height tiles cover every column of ``window`` (in its coordinates)."""
    if not tiles or any(at.y != 0 or at.h != window.h for at, _ in tiles):
        return False
    reach = 0
    for at, _ in sorted(tiles, key=lambda tile: tile[0].x):
        if at.x > reach:
            return False
        reach = max(reach, at.x + at.w)
    return reach >= window.w


def _intersection(a: Window, b: Window) -> Window | None:
    y0, x0 = max(a.y, b.y), max(a.x, b.x)
    y1, x1 = min(a.y + a.h, b.y + b.h), min(a.x + a.w, b.x + b.w)
    return Window(y0, x0, y1 - y0, x1 - x0) if y0 < y1 and x0 < x1 else None


def _overlaps(tiles: list[Window]) -> list[Window]:
    """Where two or more of ``tiles`` overlap, as the rectangles shared by pairs of them."""
    found = []
    for i, a in enumerate(tiles):
        for b in tiles[i + 1 :]:
            shared = _intersection(a, b)
            if shared is not None:
                found.append(shared)
    return found


def _mean_over(
    region: Window, tiles: list[tuple[Window, np.ndarray]], dtype: np.dtype
) -> np.ndarray:
    """The mean of every tile's map over ``region``, pixel by pixel (rounded for uint8)."""
    exact = np.issubdtype(dtype, np.integer)
    covering = [(at, probs) for at, probs in tiles if _intersection(region, at) is not None]
    if len(covering) == 2 and all(_intersection(region, at) == region for at, _ in covering):
        # The usual case, two neighbours' margin: no counts, and for uint8 one rounding add.
        (a_at, a), (b_at, b) = covering
        a = a[:, region.y - a_at.y : region.y - a_at.y + region.h,
              region.x - a_at.x : region.x - a_at.x + region.w]  # fmt: skip
        b = b[:, region.y - b_at.y : region.y - b_at.y + region.h,
              region.x - b_at.x : region.x - b_at.x + region.w]  # fmt: skip
        if exact:
            return _rounded_mean(a, b, np.empty(a.shape, np.uint16)).astype(dtype)
        return (a + b) / 2
    total = np.zeros((tiles[0][1].shape[0], region.h, region.w), np.uint32 if exact else dtype)
    count = np.zeros((region.h, region.w), np.uint32 if exact else dtype)
    for at, probs in tiles:
        shared = _intersection(region, at)
        if shared is None:
            continue
        ry, rx = shared.y - region.y, shared.x - region.x
        ty, tx = shared.y - at.y, shared.x - at.x
        total[:, ry : ry + shared.h, rx : rx + shared.w] += probs[
            :, ty : ty + shared.h, tx : tx + shared.w
        ]
        count[ry : ry + shared.h, rx : rx + shared.w] += 1
    if exact:  # round half up: (2 * total + count) // (2 * count)
        return ((2 * total + count) // (2 * count)).astype(dtype)
    return total / count
