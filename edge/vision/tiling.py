"""Cutting strips into model-sized tiles and stitching per-tile outputs back to the full frame.

Tiles overlap evenly so they cover the strip exactly (no padding on a 256x1600 strip: 7 tiles of
256 starting every 224 px). A strip smaller than a tile along an axis is padded by reflection.
"""

from __future__ import annotations

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

    Pixels no segmented tile covered stay 0: the classifier judged them clean. Sums are kept
    only over ``window`` (default: the whole strip), the part the tiles to come will cover, so
    a strip with one flagged tile costs one tile's worth of arithmetic, not the strip's. A
    window exactly one tile fills needs no arithmetic at all: ``band`` is that tile's map.
    """

    def __init__(
        self, channels: int, height: int, width: int, window: Window | None = None
    ) -> None:
        self.shape = (channels, height, width)
        self.window = Window(0, 0, height, width) if window is None else window
        self._single: np.ndarray | None = None  # the only tile so far, when it fills the window
        self._total: np.ndarray | None = None  # sums, once a second tile (or a partial one) came
        self._count: np.ndarray | None = None

    @property
    def whole(self) -> bool:
        return self.window == Window(0, 0, *self.shape[1:])

    def add(self, tile: Window, probs: np.ndarray) -> None:
        """``probs`` is C x tile_h x tile_w at the model's tile size; padding is cut off.

        The tile must lie inside the window. ``probs`` is kept, not copied, while it is the
        only tile: the caller must not change it afterwards.
        """
        cut = probs[:, : tile.h, : tile.w]
        if self._total is None and self._single is None and tile == self.window:
            self._single = cut
            return
        total, count = self._sums()
        y, x = tile.y - self.window.y, tile.x - self.window.x
        total[:, y : y + tile.h, x : x + tile.w] += cut
        count[y : y + tile.h, x : x + tile.w] += 1.0

    def _sums(self) -> tuple[np.ndarray, np.ndarray]:
        if self._total is None or self._count is None:
            w = self.window
            self._total = np.zeros((self.shape[0], w.h, w.w), np.float32)
            self._count = np.zeros((w.h, w.w), np.float32)
            if self._single is not None:
                self._total += self._single
                self._count += 1.0
                self._single = None
        return self._total, self._count

    def set_whole(self, probs: np.ndarray) -> None:
        if not self.whole:
            raise ValueError("set_whole needs a stitcher whose window is the whole strip")
        self._single, self._total, self._count = probs, None, None

    def band(self) -> np.ndarray:
        """The averaged maps over ``window`` only (C x window.h x window.w).

        A new array, or the one tile's own map when a single tile filled the window.
        """
        if self._single is not None:
            return self._single
        total, count = self._sums()
        return np.divide(total, np.maximum(count, 1.0))

    def result(self) -> np.ndarray:
        """The whole strip's C x H x W map, a new array."""
        out = np.zeros(self.shape, np.float32)
        w = self.window
        # Outside the window nothing was added: 0, as total / max(count, 1) would give there.
        out[:, w.y : w.y + w.h, w.x : w.x + w.w] = self.band()
        return out
