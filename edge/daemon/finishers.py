"""The finishing threads: inferred batches into their events, several at a time.

Stitching, thresholds, connected components and RLE are most of a defective strip's host work,
and nearly all of it runs in numpy, OpenCV and scipy with the GIL released: on one thread (the
publisher's, as it was) it capped the daemon at one core's worth of post-processing whatever the
accelerator did. Here as many threads as inference workers take batches as the workers hand them
over, in any order, and give each batch's events to the publisher as ``Finished``; the publisher
sends them in ticket order (``edge.daemon.publisher``), so the order a subscriber sees is
unchanged.

A batch holds an ``unfinished`` permit from the worker that inferred it until its events are
made: the probability maps waiting here stay bounded (``edge.daemon.inference``).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

from edge.daemon.metrics import Metrics
from edge.daemon.outcomes import Batch, Finished, post_process

_STOP = object()


class Finishers:
    def __init__(
        self,
        inbox: queue.SimpleQueue[Any],
        outbox: queue.SimpleQueue[Any],
        unfinished: threading.BoundedSemaphore,
        metrics: Metrics,
        count: int,
    ) -> None:
        self.count = max(1, count)
        self._inbox = inbox
        self._outbox = outbox
        self._unfinished = unfinished
        self._metrics = metrics

    def run(self) -> None:
        """One finishing thread's loop, until ``stop``."""
        while True:
            item = self._inbox.get()
            if item is _STOP:
                self._inbox.put(_STOP)  # for the next thread
                return
            if isinstance(item, Batch):
                self._finish(item)
            else:  # anything else keeps its place behind the batches handed over before it
                self._outbox.put(item)

    def _finish(self, batch: Batch) -> None:
        try:
            outgoing = post_process(batch, self._metrics)
        finally:
            self._unfinished.release()
        self._outbox.put(Finished(batch.ticket, outgoing))

    def stop(self) -> None:
        """Every thread stops once the batches handed over before this are finished."""
        self._inbox.put(_STOP)
