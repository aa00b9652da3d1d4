"""Connected components of a mask, found on its column runs rather than on its pixels.

A mask is first cut into vertical runs (column by column, top to bottom: the order of the
Kaggle RLE the events carry). Two runs are 8-connected when they lie in adjacent columns and
their rows overlap or touch diagonally; the components are the connected parts of that graph
(scipy's ``connected_components``). A defect is a few compact blobs, so its runs number in the
hundreds while its pixels number in the hundreds of thousands: labelling the runs costs a
fraction of labelling the pixels (measured on a 256 x 1600 mask that is all defect: 0.3 ms
against OpenCV's 1.6 ms with statistics), and the same runs then give the RLE without a second
pass over the pixels. The result is exactly OpenCV's 8-connected components, bounding boxes and
areas (tests/test_components.py checks it on random masks).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components


@dataclass(slots=True)
class Runs:
    """Vertical runs of an H x W mask, in column-major order: column ``col``, rows y0:y1."""

    height: int
    col: np.ndarray  # int64
    y0: np.ndarray
    y1: np.ndarray  # exclusive

    def __len__(self) -> int:
        return int(self.col.size)

    def select(self, which: np.ndarray) -> Runs:
        return Runs(self.height, self.col[which], self.y0[which], self.y1[which])


@dataclass(slots=True)
class Components:
    """Per component (index = label): area in pixels and bounding box x0, y0, x1, y1."""

    area: np.ndarray
    x0: np.ndarray
    y0: np.ndarray
    x1: np.ndarray  # exclusive
    y1: np.ndarray  # exclusive

    def __len__(self) -> int:
        return int(self.area.size)


def column_runs(mask: np.ndarray) -> Runs:
    """The vertical runs of a 2-D boolean (or 0/1) mask."""
    height, width = mask.shape
    # Each column with a 0 above and below, laid out column after column: every run then has
    # a rising and a falling edge inside its own column.
    padded = np.empty((width, height + 2), np.bool_)
    padded[:, 0] = padded[:, -1] = False
    padded[:, 1:-1] = mask.T
    flat = padded.ravel()
    edges = np.flatnonzero(flat[1:] != flat[:-1])
    starts, ends = edges[0::2], edges[1::2]
    stride = height + 2
    col = starts // stride
    return Runs(height, col, starts - col * stride, ends - col * stride)


def label(runs: Runs) -> tuple[int, np.ndarray]:
    """(components, component label of each run), 8-connectivity."""
    n = len(runs)
    if n == 0:
        return 0, np.zeros(0, np.int64)
    stride = runs.height + 2
    first = runs.col * stride + runs.y0  # both ascend with the runs' order
    last = runs.col * stride + runs.y1
    # Runs of the next column that reach row y0 - 1 .. y1 (y1 exclusive: touching diagonally).
    lo = np.searchsorted(last, (runs.col + 1) * stride + runs.y0, side="left")
    hi = np.searchsorted(first, (runs.col + 1) * stride + runs.y1, side="right")
    counts = np.maximum(hi - lo, 0)
    total = int(counts.sum())
    if total == 0:
        return n, np.arange(n, dtype=np.int64)
    # Edges from each run to its neighbours in the next column, row by row of a CSR matrix:
    # run i's are lo[i], lo[i] + 1, ..., hi[i] - 1.
    indptr = np.zeros(n + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    dst = np.arange(total, dtype=np.int64) + np.repeat(lo - indptr[:-1], counts)
    graph = csr_matrix((np.ones(total, np.int8), dst, indptr), shape=(n, n))
    count, labels = connected_components(graph, directed=False)
    return int(count), labels.astype(np.int64, copy=False)


def measure(runs: Runs, labels: np.ndarray, count: int) -> Components:
    """Area and bounding box of each of ``count`` components."""
    area = np.bincount(labels, weights=runs.y1 - runs.y0, minlength=count).astype(np.int64)
    x0 = np.full(count, np.iinfo(np.int64).max)
    y0 = np.full(count, np.iinfo(np.int64).max)
    x1 = np.zeros(count, np.int64)
    y1 = np.zeros(count, np.int64)
    np.minimum.at(x0, labels, runs.col)
    np.minimum.at(y0, labels, runs.y0)
    np.maximum.at(x1, labels, runs.col + 1)
    np.maximum.at(y1, labels, runs.y1)
    return Components(area, x0, y0, x1, y1)


def flat_runs(runs: Runs, start: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(starts, lengths) of the mask's runs in column-major pixel order, 0-based from
    ``start``: a run reaching a column's bottom goes on into the next column's top, as
    ``edge.protocol.rle.encode`` writes it."""
    if len(runs) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    begin = runs.col * runs.height + runs.y0 + start
    end = runs.col * runs.height + runs.y1 + start
    # A run that starts where the previous one ended continues it.
    new = np.ones(begin.size, bool)
    new[1:] = begin[1:] != end[:-1]
    heads = np.flatnonzero(new)
    tails = np.append(heads[1:], begin.size) - 1
    return begin[heads], end[tails] - begin[heads]


def paint(runs: Runs, width: int) -> np.ndarray:
    """The H x W boolean mask of ``runs``."""
    flat = np.zeros(width * runs.height + 1, np.int8)
    np.add.at(flat, runs.col * runs.height + runs.y0, 1)
    np.add.at(flat, runs.col * runs.height + runs.y1, -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(width, runs.height).T
