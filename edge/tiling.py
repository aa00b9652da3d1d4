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
class Tile:
    """A tile's window on the strip: rows y:y+h, columns x:x+w (h, w clipped to the strip)."""

    y: int
    x: int
    h: int
    w: int

    @property
    def area(self) -> int:
        return self.h * self.w

    def overlap(self, other: Tile) -> int:
        """Pixels the two windows share."""
        dy = min(self.y + self.h, other.y + other.h) - max(self.y, other.y)
        dx = min(self.x + self.w, other.x + other.w) - max(self.x, other.x)
        return max(dy, 0) * max(dx, 0)

    def covers_much_of(self, other: Tile) -> bool:
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
) -> list[Tile]:
    """Row-major tiles covering a height x width strip."""
    return [
        Tile(y, x, min(tile_h, height), min(tile_w, width))
        for y in tile_starts(height, tile_h, rows)
        for x in tile_starts(width, tile_w, columns)
    ]


def cut_tile(image: np.ndarray, tile: Tile, tile_h: int, tile_w: int) -> np.ndarray:
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
    a strip with one flagged tile costs one tile's worth of arithmetic, not the strip's.
    """

    def __init__(self, channels: int, height: int, width: int, window: Tile | None = None) -> None:
        self.shape = (channels, height, width)
        self.window = Tile(0, 0, height, width) if window is None else window
        self.total = np.zeros((channels, self.window.h, self.window.w), np.float32)
        self.count = np.zeros((self.window.h, self.window.w), np.float32)

    @property
    def whole(self) -> bool:
        return self.window == Tile(0, 0, *self.shape[1:])

    def add(self, tile: Tile, probs: np.ndarray) -> None:
        """``probs`` is C x tile_h x tile_w at the model's tile size; padding is cut off.

        The tile must lie inside the window.
        """
        y, x = tile.y - self.window.y, tile.x - self.window.x
        self.total[:, y : y + tile.h, x : x + tile.w] += probs[:, : tile.h, : tile.w]
        self.count[y : y + tile.h, x : x + tile.w] += 1.0

    def set_whole(self, probs: np.ndarray) -> None:
        if not self.whole:
            raise ValueError("set_whole needs a stitcher whose window is the whole strip")
        self.total[:] = probs
        self.count[:] = 1.0

    def result(self) -> np.ndarray:
        if self.whole:
            return self.total / np.maximum(self.count, 1.0)
        # Outside the window nothing was added: 0, as total / max(count, 1) would give there.
        out = np.zeros(self.shape, np.float32)
        w = self.window
        np.divide(
            self.total, np.maximum(self.count, 1.0), out=out[:, w.y : w.y + w.h, w.x : w.x + w.w]
        )
        return out
