"""The cascade: a classifier gates which parts of each strip the segmenter looks at.

For a batch of strips (from any cameras): classify every classifier window in batches, keep the
windows whose score reaches the gate for any class, segment only the segmenter windows that
overlap them, and stitch the segmenter's outputs back onto the full frame (overlaps averaged).

When both models have the same classes, class k is kept only inside the windows the classifier
flagged for class k: a tile segmented because of scale does not also report the segmenter's
faint pits there. The classifier confirms each class, and ``edge tune`` can rely on that.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge.backends import auto
from edge.backends.base import Backend, BackendError
from edge.modelspec import ModelFiles, load_repository
from edge.preprocess import InputAdapter, OutputAdapter
from edge.tiling import Stitcher, Tile


class Stage:
    """One model with its adapters and a preallocated input buffer of its max batch."""

    def __init__(self, files: ModelFiles, backend: Backend) -> None:
        self.files = files
        self.backend = backend
        self.inputs = InputAdapter(files.spec, backend.input_dtype)
        self.outputs = OutputAdapter(files.spec)
        self.buffer = self.inputs.new_batch(backend.max_batch)

    @property
    def spec(self):
        return self.files.spec

    def run_chunks(
        self, images: Sequence[np.ndarray], work: Sequence[tuple[int, Tile]]
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield (offset into work, raw output) for consecutive chunks of at most max batch."""
        size = self.backend.max_batch
        for start in range(0, len(work), size):
            chunk = work[start : start + size]
            for j, (i, window) in enumerate(chunk):
                self.inputs.write(self.buffer, j, self.inputs.pixels_for(images[i], window))
            yield start, self.backend.infer(self.buffer[: len(chunk)])


@dataclass(slots=True)
class StripResult:
    scores: np.ndarray  # per classifier class: the highest score over the strip's windows
    probs: np.ndarray | None  # per segmenter class, K x H x W; None when nothing passed the gate
    windows_classified: int
    windows_segmented: int
    # Where probs can be non-zero: full-height columns the segmented windows span (None: all).
    region: Tile | None = None


@dataclass(slots=True)
class Inferred:
    """A batch after the models, before stitching (see ``Cascade.infer``)."""

    shapes: list[tuple[int, int]]  # per strip: height, width
    scores: list[np.ndarray]  # per strip, as StripResult.scores
    classified: list[int]  # per strip: classifier windows
    segmented: list[int]  # per strip: segmenter windows
    # Segmenter probabilities in the order they were computed: (strip, window, C x h x w); the
    # window is None for a map of the whole strip (resize feed).
    tiles: list[tuple[int, Tile | None, np.ndarray]]
    regions: dict[int, Tile]  # per segmented strip: the band its windows span (tile feed)
    # Per segmented strip, when classes are confirmed per class: each flagged classifier
    # window and which classes it flagged.
    flagged: dict[int, list[tuple[Tile, np.ndarray]]] = field(default_factory=dict)


class Cascade:
    def __init__(self, classifier: Stage, segmenter: Stage) -> None:
        self.classifier = classifier
        self.segmenter = segmenter
        self.gate = np.asarray(classifier.spec.per_class("gate"), np.float32)
        self.per_class = classifier.spec.classes == segmenter.spec.classes

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
    ) -> Cascade:
        """Load both models of a repository and prove they run (errors name the model)."""
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
            )
            stages[role] = Stage(files, runner)
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
        self.classifier.backend.close()
        self.segmenter.backend.close()

    @property
    def model_ids(self) -> dict[str, str]:
        return {
            "classifier": self.classifier.files.model_id,
            "segmenter": self.segmenter.files.model_id,
        }

    def classify(self, images: Sequence[np.ndarray]) -> tuple[list[tuple[int, Tile]], np.ndarray]:
        """Every classifier window of every strip and its per-class scores (windows x K)."""
        work = [
            (i, window)
            for i, image in enumerate(images)
            for window in self.classifier.inputs.windows(*image.shape[:2])
        ]
        scores = np.empty((len(work), self.classifier.spec.num_classes), np.float32)
        for start, raw in self.classifier.run_chunks(images, work):
            scores[start : start + raw.shape[0]] = self.classifier.outputs.scores(raw)
        return work, scores

    def segment_work(
        self, images: Sequence[np.ndarray], suspicious: list[list[Tile]]
    ) -> list[tuple[int, Tile]]:
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
        suspicious: list[list[Tile]] = [[] for _ in images]
        flagged: dict[int, list[tuple[Tile, np.ndarray]]] = {}
        strip_scores = [np.zeros(self.classifier.spec.num_classes, np.float32) for _ in images]
        for (i, window), row, hit, classes in zip(work, scores, passing, flags, strict=True):
            np.maximum(strip_scores[i], row, out=strip_scores[i])
            if hit:
                suspicious[i].append(window)
                if self.per_class:
                    flagged.setdefault(i, []).append((window, classes))

        seg_work = self.segment_work(images, suspicious)
        tile_h, tile_w = self.segmenter.inputs.model_hw
        resize_feed = self.segmenter.inputs.feed.mode == "resize"
        tiles: list[tuple[int, Tile | None, np.ndarray]] = []
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
            classified=np.bincount([i for i, _ in work], minlength=len(images)).tolist(),
            segmented=np.bincount([i for i, _ in seg_work], minlength=len(images)).tolist(),
            tiles=tiles,
            regions={} if resize_feed else _column_spans(seg_work, images),
            flagged=flagged,
        )

    def finish(self, inferred: Inferred) -> list[StripResult]:
        """Stitch the segmenter's maps of a batch ``infer`` ran into one result per strip."""
        stitchers: dict[int, Stitcher] = {}
        classes = self.segmenter.spec.num_classes
        for i, window, probs in inferred.tiles:
            stitcher = stitchers.get(i)
            if stitcher is None:
                h, w = inferred.shapes[i]
                stitcher = stitchers[i] = Stitcher(classes, h, w, inferred.regions.get(i))
            if window is None:
                stitcher.set_whole(probs)
            else:
                stitcher.add(window, probs)
        return [
            StripResult(
                scores=inferred.scores[i],
                probs=_confirmed(stitchers[i].result(), inferred.flagged.get(i))
                if i in stitchers
                else None,
                windows_classified=inferred.classified[i],
                windows_segmented=inferred.segmented[i],
                region=stitchers[i].window if i in stitchers else None,
            )
            for i in range(len(inferred.shapes))
        ]


def _confirmed(probs: np.ndarray, flagged: list[tuple[Tile, np.ndarray]] | None) -> np.ndarray:
    """``probs`` with class k zeroed outside the windows the classifier flagged for class k."""
    if flagged is None:
        return probs
    allowed = np.zeros(probs.shape, bool)
    for window, classes in flagged:
        allowed[classes, window.y : window.y + window.h, window.x : window.x + window.w] = True
    probs *= allowed
    return probs


def _column_spans(
    work: Sequence[tuple[int, Tile]], images: Sequence[np.ndarray]
) -> dict[int, Tile]:
    """Per strip, the full-height band of columns its segmenter windows span.

    Full height and an even first column keep post-processing on the band identical to the
    whole strip: OpenCV labels components in 2x2 blocks and stripes of rows, which such a band
    shares with the strip, so labels (and the order of equal-area components) do not change.
    """
    spans: dict[int, tuple[int, int]] = {}
    for i, window in work:
        lo, hi = spans.get(i, (window.x, window.x + window.w))
        spans[i] = (min(lo, window.x), max(hi, window.x + window.w))
    return {
        i: Tile(0, lo - lo % 2, images[i].shape[0], hi - (lo - lo % 2))
        for i, (lo, hi) in spans.items()
    }
