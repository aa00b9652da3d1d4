"""The in-process modes: bare models (backend), the daemon's cascade (pipeline), the naive way.

The backend and pipeline modes run as the daemon runs its models: one stream per inference
worker, each on its own copy of the models (``edge.vision.replicas``), all at once; the ceiling is
then what the bare models do in the daemon's own arrangement. Naive is one stream on one
session over all cores, the way the seed scripts ran. Each mode is measured in slices
(``run_for``) that the runner interleaves, so work elsewhere on the machine that comes and goes
weighs on every mode alike instead of on whichever ran at the wrong moment.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from edge.daemon.frames import Frame
from edge.daemon.inference import strips_per_batch
from edge.daemon.server import result_events
from edge.daemon.sources import read_frame
from edge.protocol import pack, result_event
from edge.tools.bench.stats import latency_summary
from edge.tools.bench.workload import StripPool
from edge.vision.cascade import Cascade
from edge.vision.postprocess import defects_from_probs
from edge.vision.stage import Stage
from edge.vision.tiling import Stitcher


def in_parallel(work: Callable[[int], None], streams: int) -> None:
    """``work(i)`` for each of ``streams`` streams at once (on this thread when there is one)."""
    if streams == 1:
        work(0)
        return
    threads = [threading.Thread(target=work, args=(i,)) for i in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def _histogram(counts: Counter[int]) -> dict[str, int]:
    """Batch size -> how many batches had it (string keys: JSON object keys are strings)."""
    return {str(size): counts[size] for size in sorted(counts)}


class _Timed:
    """Accumulates the measured seconds and per-strip latencies of one mode over its slices."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.latencies_ms: list[float] = []


# -- backend: the bare models on pre-made tiles ----------------------------------------------


class BackendBench:
    """Tiles/s of each model at each batch size: the ceiling everything else is held against.

    With several cascades (one per inference worker), each model runs on all of them at once,
    each copy in its own thread, and tiles/s is their sum.
    """

    def __init__(
        self, cascades: Sequence[Cascade], pool: StripPool, batches: Sequence[int]
    ) -> None:
        self.replica_stages = [
            {"classifier": c.classifier, "segmenter": c.segmenter} for c in cascades
        ]
        self.stages = self.replica_stages[0]
        self.batches = list(batches)
        self.runs: dict[tuple[str, int], dict[str, Any]] = {}
        self.inputs: dict[tuple[str, int], np.ndarray] = {}
        for role, stage in self.stages.items():
            for asked in self.batches:
                size = asked
                if getattr(stage.backend, "fixed_batch", None):
                    size = min(asked, stage.backend.max_batch)  # a fixed-batch model caps it
                batch = _tile_batch(stage, pool, size)
                for (
                    stages
                ) in self.replica_stages:  # warm-up: first-run allocations are not throughput
                    stages[role].backend.infer(batch)
                self.inputs[role, asked] = batch
                self.runs[role, asked] = {
                    "batch": size,
                    "calls": [],
                    "seconds": 0.0,
                    "per_round": [],
                }

    def run_for(self, seconds: float, best_only: bool = False) -> None:
        """Each (model, batch size) for an equal share of ``seconds``; with ``best_only``,
        each model at the batch size where it has been fastest so far."""
        runs = self.runs
        if best_only:
            best = {
                role: max(self.batches, key=lambda b, role=role: self.tiles_per_s(role, b))
                for role in self.stages
            }
            runs = {key: run for key, run in self.runs.items() if best[key[0]] == key[1]}
        share = seconds / len(runs)
        for (role, asked), run in runs.items():
            start = time.perf_counter()
            per_stream = self._timed_calls(role, self.inputs[role, asked], start + share)
            elapsed = time.perf_counter() - start
            calls = sum(len(c) for c in per_stream)
            for c in per_stream:
                run["calls"].extend(c)
            run["seconds"] += elapsed
            run["per_round"].append(round(calls * run["batch"] / elapsed, 2))

    def _timed_calls(self, role: str, batch: np.ndarray, until: float) -> list[list[float]]:
        """Each copy of the model called on ``batch`` until ``until``, all at once; per copy,
        the seconds of each call."""
        per_stream: list[list[float]] = [[] for _ in self.replica_stages]
        backends = [stages[role].backend for stages in self.replica_stages]
        in_parallel(lambda i: _call_until(backends[i], batch, until, per_stream[i]), len(backends))
        return per_stream

    def tiles_per_s(self, role: str, asked: int) -> float:
        run = self.runs[role, asked]
        return len(run["calls"]) * run["batch"] / max(run["seconds"], 1e-9)

    def best_batch(self) -> int:
        """The batch size at which a classifier tile plus a segmenter tile cost least."""
        return min(
            self.batches,
            key=lambda b: (
                1 / self.tiles_per_s("classifier", b) + 1 / self.tiles_per_s("segmenter", b)
            ),
        )

    def section(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "settings": {"batch_sizes": self.batches, "streams": len(self.replica_stages)}
        }
        for role, stage in self.stages.items():
            runs = []
            for asked in self.batches:
                run = self.runs[role, asked]
                runs.append(
                    {
                        "batch": run["batch"],
                        "calls": len(run["calls"]),
                        "tiles": len(run["calls"]) * run["batch"],
                        "seconds": round(run["seconds"], 3),
                        "tiles_per_s": round(self.tiles_per_s(role, asked), 2),
                        # One figure per slice (each round; the best batch size also after
                        # each e2e step): their spread is this machine's noise.
                        "tiles_per_s_by_slice": run["per_round"],
                        "call_latency": latency_summary(np.array(run["calls"]) * 1000),
                    }
                )
            best = max(runs, key=lambda r: r["tiles_per_s"])
            out[role] = {
                "model": stage.files.model_id,
                "runs": runs,
                "best_tiles_per_s": best["tiles_per_s"],
                "best_batch": best["batch"],
                "batch_size_histogram": {str(r["batch"]): r["calls"] for r in runs},
            }
        out["settings"]["seconds"] = round(sum(r["seconds"] for r in self.runs.values()), 3)
        return out


def _call_until(backend: Any, batch: np.ndarray, until: float, calls: list[float]) -> None:
    """Call the model on ``batch`` until ``until`` (at least once), timing each call."""
    while time.perf_counter() < until or not calls:
        t0 = time.perf_counter()
        backend.infer(batch)  # every stream gets the same input: it is only read
        calls.append(time.perf_counter() - t0)


def _tile_batch(stage: Stage, pool: StripPool, size: int) -> np.ndarray:
    """``size`` distinct tiles from the pool, as the stage's model takes them."""
    batch = stage.new_batch(size)
    windows = [
        (image, window)
        for image in pool.images
        for window in stage.inputs.windows(*image.shape[:2])
    ]
    for j in range(size):
        image, window = windows[j % len(windows)]
        stage.put(batch, j, stage.inputs.pixels_for(image, window))
    return batch


# -- pipeline: the daemon's cascade in process -------------------------------------------------


def _messages(pool: StripPool, cameras: int) -> list[list[bytes]]:
    """Wire messages round-robin over ``cameras`` cameras, so batches mix cameras.

    Built ahead, as they would sit in ZeroMQ's buffers: building them is not measured,
    decoding them is.
    """
    return [
        pool.message(n, camera=f"cam{n % cameras + 1}", seq=n // cameras)
        for n in range(len(pool) * cameras)
    ]


def _chunks(total: int, size: int) -> list[int]:
    """The model calls ``total`` tiles take at most ``size`` per call (Stage.run_chunks)."""
    full, rest = divmod(total, size)
    return [size] * full + ([rest] if rest else [])


class PipelineBench(_Timed):
    """decode -> tile -> classify -> gate -> segment -> stitch -> post-process -> encode.

    Batches hold as many strips as the daemon's batches do at saturation; everything after
    decoding is the daemon's own code (``Cascade.run``, ``edge.server.result_events``). One
    stream per cascade (per inference worker) takes the strips in turn, as the daemon's
    workers take batches.
    """

    def __init__(
        self, cascades: Sequence[Cascade], pool: StripPool, *, max_batch: int, cameras: int
    ) -> None:
        super().__init__()
        self.cascades = list(cascades)
        cascade = self.cascades[0]
        self.per_batch = strips_per_batch(cascade, max_batch)
        self.max_batch = max_batch
        self.cameras = cameras
        self.messages = _messages(pool, cameras)
        self.strips = self.classified = self.segmented = self.defective = 0
        self._take = threading.Lock()
        self.histograms: dict[str, Counter[int]] = {
            "strips": Counter(),
            "classifier_tiles": Counter(),
            "segmenter_tiles": Counter(),
        }

    def run_for(self, seconds: float) -> None:
        start = time.perf_counter()
        in_parallel(lambda i: self._stream(self.cascades[i], start + seconds), len(self.cascades))
        self.seconds += time.perf_counter() - start

    def _stream(self, cascade: Cascade, until: float) -> None:
        first = True
        while first or time.perf_counter() < until:
            first = False
            with self._take:
                n = self.strips
                self.strips += self.per_batch
            t0 = time.perf_counter()
            frames = [
                read_frame(self.messages[(n + i) % len(self.messages)])
                for i in range(self.per_batch)
            ]
            results = cascade.run([f.pixels for f in frames])
            defective = 0
            for _, event in result_events(cascade, frames, results):
                pack(event)
                defective += event["defective"]
            latency_ms = (time.perf_counter() - t0) * 1000
            tiles = sum(r.windows_classified for r in results)
            segs = sum(r.windows_segmented for r in results)
            with self._take:
                self.latencies_ms.extend([latency_ms] * self.per_batch)
                self.defective += defective
                self.classified += tiles
                self.segmented += segs
                self.histograms["strips"][self.per_batch] += 1
                self.histograms["classifier_tiles"].update(
                    _chunks(tiles, cascade.classifier.backend.max_batch)
                )
                self.histograms["segmenter_tiles"].update(
                    _chunks(segs, cascade.segmenter.backend.max_batch)
                )

    def section(self) -> dict[str, Any]:
        s, n = max(self.seconds, 1e-9), max(self.strips, 1)
        return {
            "strips": self.strips,
            "seconds": round(self.seconds, 3),
            "strips_per_s": round(self.strips / s, 3),
            "tiles_per_s": round((self.classified + self.segmented) / s, 2),
            "classifier_tiles_per_s": round(self.classified / s, 2),
            "segmenter_tiles_per_s": round(self.segmented / s, 2),
            "classified_tiles_per_strip": round(self.classified / n, 4),
            "segmented_tiles_per_strip": round(self.segmented / n, 4),
            "defective_results": self.defective,
            "latency": latency_summary(self.latencies_ms),
            "batch_size_histogram": {k: _histogram(v) for k, v in self.histograms.items()},
            "drops": 0,
            "settings": {
                "strips_per_batch": self.per_batch,
                "max_batch": self.max_batch,
                "streams": len(self.cascades),
                "cameras": self.cameras,
                "latency_is": "decode start -> last event of its batch encoded",
            },
        }


# -- naive: the way the seed scripts work ------------------------------------------------------


def naive_event(cascade: Cascade, frame: Frame) -> dict[str, Any]:
    """One strip alone: every tile through both models one at a time, no gate, one event."""
    image = frame.pixels
    cls, seg = cascade.classifier, cascade.segmenter
    height, width = image.shape[:2]
    scores = np.zeros(cls.spec.num_classes, np.float32)
    for window in cls.inputs.windows(height, width):
        cls.put(cls.buffer, 0, cls.inputs.pixels_for(image, window))
        np.maximum(scores, cls.outputs.scores(cls.backend.infer(cls.buffer[:1]))[0], out=scores)
    stitcher = Stitcher(seg.spec.num_classes, height, width)
    tile_h, tile_w = seg.inputs.model_hw
    for window in seg.inputs.windows(height, width):
        seg.put(seg.buffer, 0, seg.inputs.pixels_for(image, window))
        raw = seg.backend.infer(seg.buffer[:1])
        if seg.inputs.feed.mode == "resize":
            stitcher.set_whole(seg.outputs.maps(raw, height, width)[0])
        else:
            stitcher.add(window, seg.outputs.maps(raw, tile_h, tile_w)[0])
    defects = defects_from_probs(stitcher.result(), seg.spec)
    return result_event(
        frame.header,
        defective=bool(defects),
        scores=[round(float(s), 4) for s in scores],
        defects=defects,
        latency_ms=round((time.monotonic_ns() - frame.received_ns) / 1e6, 3),
        model=cascade.model_ids,
    )


class NaiveBench(_Timed):
    def __init__(self, cascade: Cascade, pool: StripPool, *, cameras: int) -> None:
        super().__init__()
        self.cascade = cascade
        self.cameras = cameras
        self.messages = _messages(pool, cameras)
        self.per_strip = len(cascade.classifier.inputs.windows(256, 1600)) + len(
            cascade.segmenter.inputs.windows(256, 1600)
        )
        self.tiles = self.defective = 0

    def run_for(self, seconds: float) -> None:
        start = time.perf_counter()
        first = True
        while first or time.perf_counter() - start < seconds:
            first = False
            t0 = time.perf_counter()
            frame = read_frame(self.messages[len(self.latencies_ms) % len(self.messages)])
            event = naive_event(self.cascade, frame)
            pack(event)
            self.defective += event["defective"]
            self.tiles += self.per_strip
            self.latencies_ms.append((time.perf_counter() - t0) * 1000)
        self.seconds += time.perf_counter() - start

    def section(self) -> dict[str, Any]:
        s, n = max(self.seconds, 1e-9), len(self.latencies_ms)
        return {
            "strips": n,
            "seconds": round(self.seconds, 3),
            "strips_per_s": round(n / s, 3),
            "tiles_per_s": round(self.tiles / s, 2),
            "defective_results": self.defective,
            "latency": latency_summary(self.latencies_ms),
            "batch_size_histogram": {"strips": {"1": n}, "tiles": {"1": self.tiles}},
            "drops": 0,
            "settings": {
                "cameras": self.cameras,
                "latency_is": "decode start -> event encoded",
                "how": "each strip alone; every tile through the classifier, then every tile "
                "through the segmenter, one tile per call; no gate; whole-strip stitch and "
                "post-processing",
            },
        }
