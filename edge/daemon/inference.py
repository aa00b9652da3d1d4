"""The inference workers: batches from the work queue through the models, in tickets.

Each worker thread owns one replica of the models (``edge.vision.replicas``). Worker 0 takes
every batch it can; the others are spares that take only the work waiting while it is busy
(``WorkQueue.wait_unattended``), so a quiet line wakes one thread per batch. Taking a batch,
its ticket and the replica to run it on happen together under one lock, so tickets number the
batches in the order they left the queue; the publisher puts results back in that order
(``edge.daemon.publisher``), and a subscriber sees each camera's frames in the order they came
even though two workers finish out of turn. A reload swaps the replicas under the same lock: every
batch up to a known ticket ran on the old models, every later one on the new.

A batch the models fail on is split, so one bad frame gets a ``reject`` and the others their
results; every frame taken gets exactly one outcome.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog

from edge.daemon.config import Config
from edge.daemon.frames import Frame
from edge.daemon.metrics import Metrics
from edge.daemon.models import Handover
from edge.daemon.outcomes import Batch, InferenceFailed, Part, Retire
from edge.daemon.workqueue import SPARE_WAIT_S, Closed, WorkQueue
from edge.vision.cascade import Cascade, Inferred
from edge.vision.replicas import Replicas

log = structlog.get_logger(__name__)
# Tickets out (taken, not yet sent) per worker. A defective strip costs several clean ones, and
# events leave in ticket order: a worker may run this many batches ahead of one busy with a slow
# batch before it waits (measured on 2 cores at saturation: with 1 per worker plus 2, the
# workers spent ~11 % of their samples waiting for a ticket; with 4 plus 2, 0.7 %; with 8 plus
# 2, 1.2 %, within noise). Only a batch's finished events wait for their turn, so the window
# costs little memory.
TICKETS_PER_WORKER = 8
SPARE_TICKETS = 2
# Batches inferred and waiting to be post-processed (probability maps: megabytes each), per
# worker: memory stays bounded, and a publisher that falls behind slows the workers, which
# sheds load at the queue.
UNFINISHED_PER_WORKER = 1
DEADLINE = "deadline"  # the drop reason of a frame that waited past max_latency_ms


class InferenceWorkers:
    def __init__(
        self,
        replicas: Replicas,
        queue: WorkQueue[Frame],
        outbox: Any,
        handover: Handover,
        metrics: Metrics,
        config: Callable[[], Config],
        failed: Callable[[], bool],
        drop: Callable[[Frame, str], None] | None = None,
        unfinished: threading.BoundedSemaphore | None = None,
    ) -> None:
        """``drop(frame, reason)``: a frame's ``drop`` event (the receiver's); without it no
        frame is dropped for ``max_latency_ms``. ``unfinished``: the permits of batches
        inferred and not yet post-processed (default: UNFINISHED_PER_WORKER per worker)."""
        self.replicas = replicas
        self.count = len(replicas.cascades)
        self._queue = queue
        self._outbox = outbox
        self._handover = handover
        self._metrics = metrics
        self._config = config  # read per batch: a reload may change max_wait_ms
        self._failed = failed
        self._drop = drop
        self._take = threading.Lock()  # a batch, its ticket and its replica, taken together
        self._next_ticket = 0
        # A worker holds a ticket from before it takes a batch, so the oldest ticket can always
        # be delivered and the publisher never waits on a worker that waits on it.
        self.tickets = threading.BoundedSemaphore(self.count * TICKETS_PER_WORKER + SPARE_TICKETS)
        # The publisher post-processes batches as they come, in any order: waiting for this
        # never waits on another ticket.
        self.unfinished = unfinished or threading.BoundedSemaphore(
            self.count * UNFINISHED_PER_WORKER
        )
        self.abandon = threading.Event()  # drain ran out of time: stop after the current batch
        self._progress = [time.monotonic()] * self.count
        self.batches = 0
        self.batch_sizes: Counter[int] = Counter()  # strips per batch, for the shutdown log
        self.taken_by = [0] * self.count  # batches each worker took, for the shutdown log

    @property
    def last_progress(self) -> float:
        """When the worker that has gone longest without going round last went round."""
        return min(self._progress)

    def run(self, index: int) -> None:
        """Worker ``index``'s loop, until the queue closes, or the drain runs out of time."""
        while not self.abandon.is_set():
            self._progress[index] = time.monotonic()
            # Worker 0 always takes the next batch; the others only work that waits while
            # it (and any other) is busy. Taking turns on a quiet line cost ~8 % of a clean
            # strip's CPU (null models, 300 strips/s on 2 cores: 0.467 against 0.430 ms).
            if index > 0 and not self._queue.wait_unattended(SPARE_WAIT_S):
                continue
            if not self._acquire(self.tickets):
                return
            try:
                taken = self._take_batch(index)
            except Closed:
                self.tickets.release()
                return
            if taken is None:
                self.tickets.release()
                continue
            ticket, cascade, frames = taken
            start = time.perf_counter()
            parts = infer_parts(cascade, frames)
            self._metrics.stage("infer", time.perf_counter() - start)
            self._metrics.batch_strips.observe(len(frames))
            if not self._acquire(self.unfinished):
                return
            self._outbox.put(Batch(ticket, parts, cascade))

    def _acquire(self, permits: threading.BoundedSemaphore) -> bool:
        while not permits.acquire(timeout=0.1):
            if self._failed():
                return False  # the publisher died: nothing can be published any more
        return True

    def _take_batch(self, index: int) -> tuple[int, Cascade, list[Frame]] | None:
        with self._take:
            if self._handover.waiting:
                self._adopt_reloaded()
            cascade = self.replicas.cascades[index]
            cfg = self._config()
            frames = self._queue.get_batch(
                cfg.max_batch,
                cfg.max_wait_ms / 1000,
                cost=lambda frame: cascade.tiles(*frame.pixels.shape[:2]),
                **expiry(cfg.max_latency_ms, self._drop),
            )
            if not frames:
                return None
            ticket, self._next_ticket = self._next_ticket, self._next_ticket + 1
            self.batches += 1
            self.taken_by[index] += 1
            self.batch_sizes[len(frames)] += 1
            self._metrics.batch_tiles.observe(
                sum(cascade.tiles(*f.pixels.shape[:2]) for f in frames)
            )
            return ticket, cascade, frames

    def _adopt_reloaded(self) -> None:
        """Serve the reloaded models from the next ticket on; retire the old after the last."""
        new = self._handover.take()
        if new is None:
            return
        if len(new.cascades) != self.count:  # prepare() loads one per running worker
            log.error("reload has the wrong number of model copies; keeping the running ones")
            new.close()
            return
        self._outbox.put(Retire(self.replicas, after_ticket=self._next_ticket - 1))
        self.replicas = new


def expiry(
    max_latency_ms: float | None, drop: Callable[[Frame, str], None] | None
) -> dict[str, Any]:
    """``get_batch``'s deadline arguments: a frame is due ``max_latency_ms`` after its receipt,
    and one past it is dropped with reason ``deadline`` instead of inferred (none if off)."""
    if max_latency_ms is None:
        return {}
    if drop is None:
        log.warning("max_latency_ms is not applied: these inference workers have no drop path",
                    throttle=True)  # fmt: skip
        return {}
    budget_ns = round(max_latency_ms * 1_000_000)
    return {
        "due": lambda frame: (frame.received_ns + budget_ns) / 1e9,  # time.monotonic's clock
        "expired": lambda frame: drop(frame, DEADLINE),
    }


def tiles_per_strip(cascade: Cascade, height: int = 256, width: int = 1600) -> int:
    """Classifier windows on a strip of this size (at least one)."""
    return max(1, len(cascade.classifier.inputs.windows(height, width)))


def strips_per_batch(cascade: Cascade, max_batch: int, height: int = 256, width: int = 1600) -> int:
    """Whole strips of this size whose tiles fit ``max_batch`` (at least one), as the workers
    batch them."""
    return max(1, max_batch // cascade.tiles(height, width))


def infer_parts(cascade: Cascade, frames: list[Frame]) -> list[Part]:
    """The models on a batch; if they fail, on each frame alone, so only a bad frame is lost.

    Returns, in frame order, (frames, Inferred) for what ran and (one frame, InferenceFailed)
    for a frame the models failed on.
    """
    try:
        inferred: Inferred | InferenceFailed = cascade.infer([f.pixels for f in frames])
    except Exception:
        if len(frames) > 1:
            return [part for frame in frames for part in infer_parts(cascade, [frame])]
        header = frames[0].header
        log.exception("inference failed", camera=header.camera, seq=header.seq)
        inferred = InferenceFailed(f"inference failed on a {list(header.shape)} frame")
    return [(frames, inferred)]
