"""Kaggle/Severstal run-length encoding of binary masks.

Pixels are numbered from 1, top to bottom then left to right (column-major over the H x W
frame); the string is space-separated ``start length`` pairs. An empty mask encodes as ``""``.
"""

from __future__ import annotations

import numpy as np


def encode(mask: np.ndarray, start: int = 0) -> str:
    """RLE of a 2-D boolean (or 0/1) mask.

    ``start`` shifts every run: for a mask made of whole columns of a wider frame, the frame's
    pixels (column-major) before the mask's first pixel.
    """
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F").view(np.uint8)
    # Padding with zeros makes every run have a rising and a falling edge.
    edges = np.flatnonzero(np.diff(flat, prepend=np.uint8(0), append=np.uint8(0)))
    if edges.size == 0:
        return ""
    starts = edges[0::2] + 1 + start
    lengths = edges[1::2] - edges[0::2]
    pairs = np.empty(starts.size * 2, dtype=np.int64)
    pairs[0::2], pairs[1::2] = starts, lengths
    return " ".join(map(str, pairs.tolist()))


def runs(mask: np.ndarray) -> int:
    """How many runs ``encode(mask)`` would write, without writing them."""
    flat = np.asarray(mask, dtype=bool).ravel(order="F").view(np.uint8)
    if flat.size == 0:
        return 0
    return int(flat[0]) + int(np.count_nonzero(flat[1:] > flat[:-1]))


def decode(rle: str, height: int, width: int) -> np.ndarray:
    """The H x W boolean mask of an RLE string; raises ValueError on a malformed string."""
    flat = np.zeros(height * width, dtype=bool)
    tokens = rle.split()
    if len(tokens) % 2:
        raise ValueError(f"RLE has an odd number of values ({len(tokens)})")
    if not tokens:
        return flat.reshape((height, width), order="F")
    try:
        values = np.asarray(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        raise ValueError("RLE holds something other than integers that fit 64 bits") from None
    starts, lengths = values[0::2] - 1, values[1::2]
    if (starts < 0).any() or (lengths < 1).any():
        raise ValueError("RLE starts must be >= 1 and lengths >= 1")
    # Compared apart, not as starts + lengths: near 2**63 that sum wraps around negative.
    if (starts >= flat.size).any() or (lengths > flat.size - starts).any():
        raise ValueError(f"RLE runs past the end of a {height}x{width} mask")
    ends = starts + lengths
    # A cumulative sum of +1/-1 at run edges marks covered pixels without a Python loop.
    marks = np.zeros(flat.size + 1, dtype=np.int32)
    np.add.at(marks, starts, 1)
    np.add.at(marks, ends, -1)
    flat = np.cumsum(marks[:-1]) > 0
    return flat.reshape((height, width), order="F")
