"""Connected components of a mask, found on its column runs rather than on its pixels.

A mask is first cut into vertical runs (column by column, top to bottom: the order of the
Kaggle RLE the events carry). Two runs are 8-connected when they lie in adjacent columns and
their rows overlap or touch diagonally; the components are the connected parts of that graph
(a vectorised union-find over the runs). A defect is a few compact blobs, so its runs number in
the hundreds while its pixels number in the hundreds of thousands: labelling the runs costs a
fraction of labelling the pixels (measured on a 256 x 1600 mask that is all defect: 0.1 ms
against OpenCV's 1.6 ms with statistics), and the same runs then give the RLE without a second
pass over the pixels. A column that repeats the one before it is labelled as that column, so a
wide uniform region (a saturated frame) costs a few columns, not one per column. Written here
rather than taken from a library: OpenCV labels pixels, and scipy's graph labelling cost more
in building its sparse matrix than in labelling. The result is exactly OpenCV's 8-connected
components, bounding boxes and areas (tests/test_components.py checks it on random masks and
on masks of repeated columns).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np


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
    # Column after column (OpenCV's transpose: a sixth of numpy's time for this copy).
    flat = cv2.transpose(np.ascontiguousarray(mask).view(np.uint8)).ravel()
    return runs_of_columns(flat, mask.shape[0])


def runs_of_columns(flat: np.ndarray, height: int) -> Runs:
    """The vertical runs of a mask given column after column (``height`` values each, 0/1)."""
    if flat.size == 0:
        empty = np.zeros(0, np.int64)
        return Runs(height, empty, empty, empty)
    # flat[p] != flat[p - 1], into a buffer this thread keeps (a strip's worth of fresh
    # memory per class costs page faults: measured, half the time of this step).
    differ = np.not_equal(flat[1:], flat[:-1], out=scratch("differ", flat.size - 1, np.bool_))
    change = np.flatnonzero(differ) + 1
    rising = flat[change] != 0
    # A run that goes on from one column's bottom to the next one's top is two runs here.
    tops = np.arange(height, flat.size, height)
    split = tops[(flat[tops] != 0) & (flat[tops - 1] != 0)]
    first = [np.zeros(1, np.int64)] if flat[0] else []
    last = [np.full(1, flat.size, np.int64)] if flat[-1] else []
    starts = np.sort(np.concatenate([*first, change[rising], split]))
    ends = np.sort(np.concatenate([change[~rising], split, *last]))
    col = starts // height
    return Runs(height, col, starts - col * height, ends - col * height)


_scratch = threading.local()


def scratch(name: str, size: int, dtype: type) -> np.ndarray:
    """A 1-D buffer of ``size`` this thread reuses under ``name`` (grown when too small).

    Its contents are the caller's until the next call with this name on this thread.
    """
    pool: dict[str, np.ndarray] = _scratch.__dict__.setdefault("pool", {})
    buffer = pool.get(name)
    if buffer is None or buffer.size < size or buffer.dtype != dtype:
        buffer = pool[name] = np.empty(size, dtype)
    return buffer[:size]


@dataclass(slots=True)
class Found:
    """The components of several masks of one height, labelled in one pass."""

    runs: Runs  # every mask's runs, mask after mask; ``col`` within its own mask
    mask_of_run: np.ndarray
    count: int  # components
    labels: np.ndarray  # component of each run
    stats: Components  # bounding boxes within their own mask
    mask_of: np.ndarray  # mask of each component


def components_of(runs: list[Runs]) -> Found:
    """The components of several masks of one height, from their runs, found together: the
    fixed cost of a few dozen numpy calls is paid once for every class and band of a strip,
    not per mask. Each mask's columns follow the last one's after an empty column, so no
    component reaches from one mask into the next."""
    height = runs[0].height
    sizes = [len(r) for r in runs]
    mask_of_run = np.repeat(np.arange(len(runs)), sizes)
    col = np.concatenate([r.col for r in runs])
    y0 = np.concatenate([r.y0 for r in runs])
    y1 = np.concatenate([r.y1 for r in runs])
    widths = [int(r.col[-1]) + 1 if len(r) else 0 for r in runs]
    offsets = np.cumsum([0, *[w + 1 for w in widths[:-1]]])  # + 1: the empty column
    count, labels = label(Runs(height, col + offsets[mask_of_run], y0, y1))
    local = Runs(height, col, y0, y1)
    mask_of = np.zeros(count, np.int64)
    mask_of[labels] = mask_of_run
    return Found(local, mask_of_run, count, labels, measure(local, labels, count), mask_of)


# Repeated columns are looked for in masks of at least this many runs: in fewer the search
# costs as much as the labelling it could save (blobs of 322 runs: 34 us against 50 us).
REPEATS_FROM = 1024


def label(runs: Runs) -> tuple[int, np.ndarray]:
    """(components, component label of each run), 8-connectivity.

    A column whose runs are the rows of the column before it changes no component: it is
    labelled as that column. So a wide region of identical columns (a saturated frame, a band
    of scale the strip's height) is labelled as one column, not a run per column."""
    collapsed = _without_repeats(runs) if len(runs) >= REPEATS_FROM else None
    if collapsed is None:
        return _label(runs)
    kept, stand_in = collapsed
    count, labels = _label(kept)
    return count, labels[stand_in]


def _without_repeats(runs: Runs) -> tuple[Runs, np.ndarray] | None:
    """The runs less every column that repeats the column before it (the columns after them
    moved left to close the gap), and for each run the index among those of the run it is a
    repeat of (itself if kept); None if no column repeats."""
    n = len(runs)
    if n < 2:
        return None
    first = np.flatnonzero(np.diff(runs.col)) + 1
    first = np.concatenate([np.zeros(1, np.int64), first])  # each column's first run
    count = np.diff(np.append(first, n))
    cols = runs.col[first]
    adjacent = np.zeros(cols.size, bool)
    adjacent[1:] = (cols[1:] == cols[:-1] + 1) & (count[1:] == count[:-1])
    if not adjacent.any():
        return None
    # Run i against the run as many places back as the column before it has runs.
    back = np.repeat(np.concatenate([np.zeros(1, np.int64), count[:-1]]), count)
    index = np.arange(n, dtype=np.int64)
    partner = np.maximum(index - back, 0)
    same = (runs.y0 == runs.y0[partner]) & (runs.y1 == runs.y1[partner])
    repeats = adjacent & np.logical_and.reduceat(same, first)
    if not repeats.any():
        return None
    # Each column stands for itself, or for the column its streak of repeats started from.
    column = np.arange(cols.size)
    origin = np.maximum.accumulate(np.where(repeats, 0, column))
    column_of_run = np.repeat(column, count)
    source = first[origin[column_of_run]] + (index - first[column_of_run])
    keep = ~repeats[column_of_run]
    position = np.cumsum(keep) - 1
    shift = np.cumsum(repeats)[column_of_run]
    kept = Runs(runs.height, (runs.col - shift)[keep], runs.y0[keep], runs.y1[keep])
    return kept, position[source]


def _label(runs: Runs) -> tuple[int, np.ndarray]:
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
    src = np.repeat(np.arange(n), counts)
    dst = np.arange(total, dtype=np.int64) + np.repeat(lo - (np.cumsum(counts) - counts), counts)
    return _union(n, src, dst)


def _union(n: int, src: np.ndarray, dst: np.ndarray) -> tuple[int, np.ndarray]:
    """Connected components of the graph with edges src[i] - dst[i], labelled 0..k-1.

    Vectorised union-find: every round hooks the larger root of each edge's ends onto the
    smaller one, then compresses every path to its root. Roots only ever decrease, so it
    ends; a chain across a strip (a scratch: one run per column) takes two rounds. A few
    dozen numpy calls on arrays of runs: a tenth of what building a sparse matrix for
    scipy's connected_components cost here (0.02 ms against 0.2 for 1,600 runs).
    """
    parent = np.arange(n, dtype=np.int64)
    while True:
        while True:  # pointer jumping until every node points at its root
            grand = parent[parent]
            if np.array_equal(grand, parent):
                break
            parent = grand
        a, b = parent[src], parent[dst]
        apart = a != b
        if not apart.any():
            break
        a, b = a[apart], b[apart]
        np.minimum.at(parent, np.maximum(a, b), np.minimum(a, b))
    roots, labels = np.unique(parent, return_inverse=True)
    return int(roots.size), labels.astype(np.int64, copy=False)


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
