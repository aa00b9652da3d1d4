"""The finishing threads: inferred batches into their events, several at a time.

Stitching, thresholds, connected components and RLE are most of a defective strip's host work,
and nearly all of it runs in numpy, OpenCV and scipy with the GIL released: on one thread (the
publisher's, as it was) it capped the daemon at one core's worth of post-processing whatever the
accelerator did. Here as many threads as inference workers take batches as the workers hand them
over, in any order, and give each batch's events to the publisher as ``Finished``; the publisher
sends them in ticket order (``edge.daemon.publisher``), so the order a subscriber sees is
unchanged.

A batch with nothing to stitch (no tile passed the gate, or the models failed) is finished at
once by the worker that hands it over: its events are a few small dicts, and a trip through
another thread would cost more than making them (measured with null models at 300 clean strips
per second: 0.07 ms of CPU per strip in the finishing threads, 0.01 ms inline).

As with the inference workers, thread 0 takes every batch it can and the others only the batches
that wait while it is busy (``WorkQueue.wait_unattended``): threads taking turns each came back
to caches gone cold, their own scratch buffers included (measured with null models, 40
all-defective strips/s on 2 vCPUs: the finishing threads' CPU per strip fell from 2.5 to 2.0 ms).

A batch holds an ``unfinished`` permit from the worker that inferred it until its events are
made: the probability maps waiting here stay bounded (``edge.daemon.inference``).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

from edge.daemon.metrics import Metrics
from edge.daemon.outcomes import Batch, Finished, InferenceFailed, post_process
from edge.daemon.workqueue import SPARE_WAIT_S, Closed, WorkQueue

# The inbox is bounded by the ``unfinished`` permits, not by its capacity: it never fills.
_INBOX_CAPACITY = 1 << 16


class Finishers:
    def __init__(
        self,
        outbox: queue.SimpleQueue[Any],
        unfinished: threading.BoundedSemaphore,
        metrics: Metrics,
        count: int,
        publish_crops: Callable[[], bool] = lambda: False,
    ) -> None:
        self.count = max(1, count)
        # Read per batch, as the config is: a reload turns crops on or off from the next batch.
        self._publish_crops = publish_crops
        self._inbox: WorkQueue[Batch] = WorkQueue(_INBOX_CAPACITY, "block")
        self._outbox = outbox
        self._unfinished = unfinished
        self._metrics = metrics
        self.finished_by = [0] * self.count  # batches each thread finished (inline: not counted)

    def put(self, item: Any) -> None:
        """Hand over a batch (finished here if it has nothing to stitch), or anything else
        for the publisher (a ``Retire``: the publisher orders it by ticket, not by arrival)."""
        if not isinstance(item, Batch):
            self._outbox.put(item)
        elif _has_maps(item):
            self._inbox.put(item)
        else:
            self._finish(item)

    def run(self, index: int = 0) -> None:
        """Finishing thread ``index``'s loop, until ``stop`` and the batches before it are done."""
        while True:
            if index > 0 and not self._inbox.wait_unattended(SPARE_WAIT_S):
                continue
            try:
                taken = self._inbox.get_batch(1, 0, idle_timeout_s=SPARE_WAIT_S)
            except Closed:
                return
            for batch in taken:
                self._finish(batch)
                self.finished_by[index] += 1

    def _finish(self, batch: Batch) -> None:
        try:
            outgoing = post_process(batch, self._metrics, crops=self._publish_crops())
        finally:
            self._unfinished.release()
        self._outbox.put(Finished(batch.ticket, outgoing))

    def stop(self) -> None:
        """Every thread stops once the batches handed over before this are finished."""
        self._inbox.close()


def _has_maps(batch: Batch) -> bool:
    """Whether any part of the batch has segmenter maps to stitch."""
    return any(not isinstance(outcome, InferenceFailed) and outcome.tiles
               for _, outcome in batch.parts)  # fmt: skip
