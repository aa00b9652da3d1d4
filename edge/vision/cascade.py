"""The cascade: a classifier gates which parts of each strip the segmenter looks at.

For a batch of strips (from any cameras): classify every classifier window in batches, keep the
windows whose score reaches the gate for any class, segment only the segmenter windows that
overlap them, and stitch the segmenter's outputs back onto the full frame (overlaps averaged).

When both models have the same classes, class k is kept only inside the windows the classifier
flagged for class k: a tile segmented because of scale does not also report the segmenter's
faint pits there. The classifier confirms each class, and ``edge tune`` can rely on that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.vision.backends import auto
from edge.vision.backends.base import BackendError
from edge.vision.backends.openvino import OpenVinoOptions
from edge.vision.modelspec import load_repository
from edge.vision.preprocess import InputAdapter
from edge.vision.stage import RECHECK_MARGIN, Stage
from edge.vision.tiling import Stitcher, Window


@dataclass(slots=True)
class Band:
    """Probabilities over full-height columns of a strip: one run of adjacent segmented windows."""

    region: Window  # where on the strip
    probs: np.ndarray  # per segmenter class, K x region.h x region.w, uint8 round(255 * p)


@dataclass(slots=True)
class StripResult:
    scores: np.ndarray  # per classifier class: the highest score over the strip's windows
    # The segmenter's probabilities where it looked, left to right; 0 everywhere else on the
    # strip. Empty when nothing passed the gate. Only the bands are kept: a strip with one
    # flagged tile costs one tile's worth of post-processing, not a whole strip's.
    bands: list[Band]
    windows_classified: int
    windows_segmented: int
    shape: tuple[int, int]  # the strip's height, width

    @property
    def probs(self) -> np.ndarray | None:
        """The whole strip's K x H x W uint8 maps, round(255 * p) (a new array), or None if
        not segmented."""
        if not self.bands:
            return None
        full = np.zeros((self.bands[0].probs.shape[0], *self.shape), self.bands[0].probs.dtype)
        for band in self.bands:
            r = band.region
            full[:, r.y : r.y + r.h, r.x : r.x + r.w] = band.probs
        return full


@dataclass(slots=True)
class Inferred:
    """A batch after the models, before stitching (see ``Cascade.infer``)."""

    shapes: list[tuple[int, int]]  # per strip: height, width
    scores: list[np.ndarray]  # per strip, as StripResult.scores
    classified: list[int]  # per strip: classifier windows
    segmented: list[int]  # per strip: segmenter windows
    # Segmenter maps (uint8) in the order they were computed: (strip, window, C x h x w); the
    # window is None for a map of the whole strip (resize feed).
    tiles: list[tuple[int, Window | None, np.ndarray]]
    # Per segmented strip, the bands its windows span, left to right (tile feed).
    regions: dict[int, list[Window]]
    # Per segmented strip, when classes are confirmed per class: each flagged classifier
    # window and which classes it flagged.
    flagged: dict[int, list[tuple[Window, np.ndarray]]] = field(default_factory=dict)


class Cascade:
    def __init__(self, classifier: Stage, segmenter: Stage) -> None:
        self.classifier = classifier
        self.segmenter = segmenter
        self.gate = np.asarray(classifier.spec.per_class("gate"), np.float32)
        self.per_class = classifier.spec.classes == segmenter.spec.classes
        self._tiles: dict[tuple[int, int], int] = {}

    def tiles(self, height: int, width: int) -> int:
        """Model inputs a strip of this size costs at most: every classifier window, or every
        segmenter window if there are more (what ``max_batch`` counts, whatever the shape)."""
        key = (height, width)
        count = self._tiles.get(key)
        if count is None:
            count = max(
                1,
                len(self.classifier.inputs.windows(height, width)),
                len(self.segmenter.inputs.windows(height, width)),
            )
            if len(self._tiles) < 256:  # shapes come from the wire: keep the cache bounded
                self._tiles[key] = count
        return count

    @classmethod
    def load(
        cls,
        models: Path,
        backend: auto.BackendName = "onnxruntime",
        *,
        max_batch: int = 32,
        threads: int = 0,
        engines: Path | None = None,
        rebuild_stale: bool = False,
        fused: bool = True,
        openvino: OpenVinoOptions | None = None,
        check: auto.CheckStrips | None = None,
    ) -> Cascade:
        """Load both models of a repository and prove they run (errors name the model).

        ``fused``: each model runs inside its prologue and epilogue (``build_engine.graph``),
        as the daemon serves them; False: the raw model, pre- and post-processed on the host.
        ``openvino`` and ``check``: how OpenVINO compiles, and the strips ``auto`` checks it on.
        """
        stages = {}
        for role, files in load_repository(models).items():
            sample_shape = InputAdapter(files.spec).sample_shape()
            runner = auto.create(
                backend,
                files,
                sample_shape,
                max_batch=max_batch,
                threads=threads,
                engines=engines,
                rebuild_stale=rebuild_stale,
                fused=fused,
                options=openvino,
                check=check,
            )
            precise = None
            if role == "classifier":
                precise = auto.precise_twin(runner, files, sample_shape, max_batch, threads)
            stages[role] = Stage(files, runner, precise)
        cascade = cls(stages["classifier"], stages["segmenter"])
        cascade.self_test()
        return cascade

    def self_test(self) -> None:
        """Run each model once on a blank strip, so a broken model fails at startup, not later."""
        blank = np.full((256, 1600), 128, np.uint8)
        for stage in (self.classifier, self.segmenter):
            window = stage.inputs.windows(256, 1600)[0]
            try:
                (_, raw), *_ = stage.run_chunks([blank], [(0, window)])
                if stage is self.classifier:
                    stage.outputs.scores(raw)
                else:
                    stage.outputs.maps(raw, *stage.inputs.model_hw)
            except Exception as exc:
                raise BackendError(
                    f"model {stage.files.model_id} failed its self-test: {exc}"
                ) from exc

    def close(self) -> None:
        for stage in (self.classifier, self.segmenter):
            stage.backend.close()
            if stage.precise is not None:
                stage.precise.close()

    @property
    def model_ids(self) -> dict[str, str]:
        return {
            "classifier": self.classifier.files.model_id,
            "segmenter": self.segmenter.files.model_id,
        }

    def classify(self, images: Sequence[np.ndarray]) -> tuple[list[tuple[int, Window]], np.ndarray]:
        """Every classifier window of every strip and its per-class scores (windows x K)."""
        work = [
            (i, window)
            for i, image in enumerate(images)
            for window in self.classifier.inputs.windows(*image.shape[:2])
        ]
        stage = self.classifier
        scores = np.empty((len(work), stage.spec.num_classes), np.float32)
        for start, raw in stage.run_chunks(images, work):
            scores[start : start + raw.shape[0]] = stage.outputs.scores(raw)
        if stage.precise is not None and work:
            # A reduced-precision score this close to a gate may fall on the other side of it
            # than FP32's, and a flipped gate adds or drops a whole tile's defects: those
            # windows are scored again in FP32 (a few percent of them on real strips).
            near = np.flatnonzero((np.abs(scores - self.gate) < RECHECK_MARGIN).any(axis=1))
            again = [work[j] for j in near.tolist()]
            for start, raw in stage.run_chunks(images, again, stage.precise):
                scores[near[start : start + raw.shape[0]]] = stage.outputs.scores(raw)
        return work, scores

    def segment_work(
        self, images: Sequence[np.ndarray], suspicious: list[list[Window]]
    ) -> list[tuple[int, Window]]:
        """Segmenter windows that cover much of a window the classifier flagged.

        With the same tiling for both models that is exactly the flagged tiles.
        """
        work = []
        for i, flagged in enumerate(suspicious):
            if not flagged:
                continue
            for window in self.segmenter.inputs.windows(*images[i].shape[:2]):
                if self.segmenter.inputs.feed.mode == "resize" or any(
                    window.covers_much_of(f) for f in flagged
                ):
                    work.append((i, window))
        return work

    def run(self, images: Sequence[np.ndarray]) -> list[StripResult]:
        return self.finish(self.infer(images))

    def infer(self, images: Sequence[np.ndarray]) -> Inferred:
        """Both models on a batch: classify, gate, segment. Stitching is left to ``finish``.

        Every model call and every check of a model's output happens here, so a broken model
        or frame fails here; ``finish`` is plain arithmetic on outputs already checked. The
        daemon runs the two on different threads so the models never wait for the stitching.
        """
        work, scores = self.classify(images)
        flags = scores >= self.gate
        passing = flags.any(axis=1)
        suspicious: list[list[Window]] = [[] for _ in images]
        flagged: dict[int, list[tuple[Window, np.ndarray]]] = {}
        # Work is strip after strip, every strip one window at least: a strip's score per class
        # is the maximum over its run of rows (one reduceat, not a call per window).
        per_strip = [len(self.classifier.inputs.windows(*image.shape[:2])) for image in images]
        firsts = np.cumsum([0, *per_strip[:-1]])
        # (at least 0, as a model with output.activation = "none" may go below it)
        strip_scores = (
            list(np.maximum(np.maximum.reduceat(scores, firsts, axis=0), 0)) if work else []
        )
        for j in np.flatnonzero(passing).tolist():  # the few windows that passed
            i, window = work[j]
            suspicious[i].append(window)
            if self.per_class:
                flagged.setdefault(i, []).append((window, flags[j]))

        seg_work = self.segment_work(images, suspicious)
        tile_h, tile_w = self.segmenter.inputs.model_hw
        resize_feed = self.segmenter.inputs.feed.mode == "resize"
        tiles: list[tuple[int, Window | None, np.ndarray]] = []
        for start, raw in self.segmenter.run_chunks(images, seg_work):
            chunk = seg_work[start : start + raw.shape[0]]
            if resize_feed:
                for j, (i, _) in enumerate(chunk):
                    h, w = images[i].shape[:2]
                    tiles.append((i, None, self.segmenter.outputs.maps(raw[j : j + 1], h, w)[0]))
            else:
                maps = self.segmenter.outputs.maps(raw, tile_h, tile_w)
                tiles.extend((i, window, maps[j]) for j, (i, window) in enumerate(chunk))

        return Inferred(
            shapes=[image.shape[:2] for image in images],
            scores=strip_scores,
            classified=per_strip,
            segmented=np.bincount([i for i, _ in seg_work], minlength=len(images)).tolist(),
            tiles=tiles,
            regions={} if resize_feed else _column_spans(seg_work, images),
            flagged=flagged,
        )

    def finish(self, inferred: Inferred) -> list[StripResult]:
        """Stitch the segmenter's maps of a batch ``infer`` ran into one result per strip."""
        stitchers: dict[int, list[Stitcher]] = {}
        classes = self.segmenter.spec.num_classes
        for i, window, probs in inferred.tiles:
            bands = stitchers.get(i)
            if bands is None:
                h, w = inferred.shapes[i]
                regions = inferred.regions.get(i) or [Window(0, 0, h, w)]
                bands = stitchers[i] = [Stitcher(classes, h, w, r) for r in regions]
            if window is None:
                bands[0].set_whole(probs)
                continue
            for stitcher in bands:
                if stitcher.window.x <= window.x < stitcher.window.x + stitcher.window.w:
                    stitcher.add(window, probs)
                    break
        results = []
        for i, shape in enumerate(inferred.shapes):
            flagged = inferred.flagged.get(i)
            results.append(
                StripResult(
                    scores=inferred.scores[i],
                    bands=[
                        Band(s.window, _confirmed(s.band(), s.window, flagged))
                        for s in stitchers.get(i, [])
                    ],
                    windows_classified=inferred.classified[i],
                    windows_segmented=inferred.segmented[i],
                    shape=shape,
                )
            )
        return results


def _confirmed(
    band: np.ndarray, region: Window, flagged: list[tuple[Window, np.ndarray]] | None
) -> np.ndarray:
    """``band`` with class k zeroed outside the windows the classifier flagged for class k."""
    if flagged is None:
        return band
    classes, height, width = band.shape
    rows_whole = all(w.y <= region.y and w.y + w.h >= region.y + region.h for w, _ in flagged)
    # Windows of the whole band's height (one row of tiles) allow whole columns: a K x w
    # table then says it all, and most bands need no arithmetic at all.
    allowed = np.zeros((classes, 1 if rows_whole else height, width), bool)
    for window, flags in flagged:
        # Flagged windows outside the band were not segmented: nothing there to allow.
        y0, x0 = max(window.y - region.y, 0), max(window.x - region.x, 0)
        y1 = min(window.y + window.h - region.y, region.h)
        x1 = min(window.x + window.w - region.x, region.w)
        if y0 < y1 and x0 < x1:
            rows = slice(0, 1) if rows_whole else slice(y0, y1)
            allowed[flags, rows, x0:x1] = True
    for k in range(classes):
        if allowed[k].all():
            continue
        if not allowed[k].any():
            band[k] = 0
        else:
            band[k] *= allowed[k]
    return band


def _column_spans(
    work: Sequence[tuple[int, Window]], images: Sequence[np.ndarray]
) -> dict[int, list[Window]]:
    """Per strip, the full-height bands of columns its segmenter windows span, left to right.

    Windows that overlap or touch share a band; bands are apart by at least one column no
    window covers, so no connected component of a mask crosses from one band to another.
    """
    columns: dict[int, list[tuple[int, int]]] = {}
    for i, window in work:
        columns.setdefault(i, []).append((window.x, window.x + window.w))
    spans: dict[int, list[Window]] = {}
    for i, ranges in columns.items():
        height = images[i].shape[0]
        merged: list[list[int]] = []
        for lo, hi in sorted(ranges):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        spans[i] = [Window(0, lo, height, hi - lo) for lo, hi in merged]
    return spans
