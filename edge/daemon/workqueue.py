"""The bounded queue between the receiver and the inference thread.

It never grows past ``capacity``: when full, ``drop-oldest`` evicts the oldest frame and hands
it back so the caller can publish its ``drop`` event; ``block`` makes the producer wait (and
ZeroMQ's high-water mark then drops upstream, which the daemon reports as gaps). The consumer
takes frames in batches: as many as fit a cost budget (the daemon's: model tiles, whatever the
strips' shapes), waiting at most ``max_wait_s`` to fill a batch.

Spare consumers (the daemon's inference workers after the first) wait in ``wait_unattended``
for work that no consumer is waiting to take: on a quiet line one worker takes every batch and
the others sleep, instead of taking turns (each turn a wake-up of a thread whose caches went
cold); under load every worker is busy.

Items may carry a deadline (``due``: the daemon's is receipt + ``max_latency_ms``): one past it
when a batch is taken is never handed out as work but to ``expired`` (the daemon's ``drop``
with reason ``deadline``), and a partial batch stops waiting for more at its oldest deadline.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
OverloadPolicy = Literal["drop-oldest", "block"]
# How long the daemon's consumers (a spare inference worker, a finishing thread) wait for work
# before they look round: to stop, and to show that they are alive.
SPARE_WAIT_S = 0.1


class Closed(Exception):
    """The queue was closed and is empty: the consumer is done."""


class WorkQueue(Generic[T]):
    def __init__(self, capacity: int, policy: OverloadPolicy = "drop-oldest") -> None:
        self.capacity = capacity
        self.policy = policy
        self._items: deque[T] = deque()
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # consumers taking a batch, producers blocking
        self._spare = threading.Condition(lock)  # spare consumers (``wait_unattended``)
        self._takers = 0  # consumers inside get_batch
        self._closed = False
        # While a consumer waits for its batch to fill: its budget and cost. A put wakes it only
        # when that batch is full (it wakes by itself at its time limit): on 2 vCPUs every
        # wake-up is a context switch, and they, not the work, were most of a clean strip's CPU.
        self._filling: tuple[int, Callable[[T], int]] | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, item: T, stop: threading.Event | None = None) -> T | None:
        """Enqueue; return the evicted oldest item under drop-oldest when full, else None.

        Under ``block``, waits for room; if ``stop`` is set meanwhile the item is returned
        unqueued (so the caller can still account for it).
        """
        with self._cond:
            evicted = None
            while len(self._items) >= self.capacity:
                if self.policy == "drop-oldest":
                    evicted = self._items.popleft()
                    break
                if stop is not None and stop.is_set():
                    return item
                self._cond.wait(0.05)
            self._items.append(item)
            if self._filling is None or self._fits(*self._filling)[1]:
                self._cond.notify_all()
            if self._takers == 0:
                self._spare.notify()
            return evicted

    def wait_unattended(self, timeout_s: float) -> bool:
        """Wait until items are queued that no consumer is waiting to take in ``get_batch``,
        or the queue is closed; False if ``timeout_s`` passed first. A spare consumer calls this
        before ``get_batch``: it is woken only when the others are busy (one spare per item)."""
        with self._spare:
            return self._spare.wait_for(
                lambda: self._closed or (bool(self._items) and self._takers == 0), timeout_s
            )

    def get_batch(
        self,
        max_cost: int,
        max_wait_s: float,
        idle_timeout_s: float = 0.1,
        cost: Callable[[T], int] = lambda _: 1,
        *,
        due: Callable[[T], float] | None = None,
        expired: Callable[[T], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> list[T]:
        """The oldest items whose ``cost`` adds up to at most ``max_cost`` (always at least one).

        Waits up to ``idle_timeout_s`` for the first item, then ``max_wait_s`` more for the batch
        to fill. Returns [] on idle timeout; raises Closed when drained.

        With ``due`` (an item's deadline on ``clock``), items past it when the batch is taken are
        removed and passed to ``expired``, each once and in queue order, after the lock is let
        go; they are never in a batch. The wait to fill ends at the earliest deadline in the
        batch, and the batch is then taken as of that deadline, so no item expires only because
        its batch waited for more. The result may be [] although items were waiting: they had
        all expired.
        """
        if due is not None and expired is None:
            raise ValueError("get_batch: due needs expired, or expired items would be lost")
        gone: list[T] = []
        try:
            with self._cond:
                self._takers += 1
                try:
                    return self._take(max_cost, max_wait_s, idle_timeout_s, cost, due, clock, gone)
                finally:
                    self._takers -= 1
                    if self._items and self._takers == 0:
                        self._spare.notify()  # left for a spare consumer
        finally:
            if expired is not None:
                for item in gone:
                    expired(item)

    def _take(
        self,
        max_cost: int,
        max_wait_s: float,
        idle_timeout_s: float,
        cost: Callable[[T], int],
        due: Callable[[T], float] | None,
        clock: Callable[[], float],
        gone: list[T],
    ) -> list[T]:
        """``get_batch`` with the lock held; expired items are added to ``gone``."""
        if not self._cond.wait_for(lambda: self._items or self._closed, idle_timeout_s):
            return []
        if not self._items:
            raise Closed
        deadline = time.monotonic() + max_wait_s
        cap: float | None = None  # the wait ran up to the batch's first deadline
        while True:
            if due is not None:  # as of the first deadline, if the wait ran up to it
                now = clock()
                gone += self._expire(due, now if cap is None else min(now, cap))
            count, full = self._fits(max_cost, cost)
            if full or self._closed or not self._items or cap is not None:
                break
            remaining = deadline - time.monotonic()
            first = math.inf
            if due is not None:
                first = min(map(due, self._head(count)))
                remaining = min(remaining, first - clock())
            if remaining <= 0:
                break
            self._filling = (max_cost, cost)
            try:
                self._cond.wait(remaining)
            finally:
                self._filling = None
            if clock() >= first:
                cap = first
        batch = [self._items.popleft() for _ in range(count)]
        self._cond.notify_all()
        return batch

    def _expire(self, due: Callable[[T], float], now: float) -> list[T]:
        """Remove and return the items past their deadline at ``now``; the rest keep their
        order (lock held)."""
        late: list[T] = []
        kept: deque[T] = deque()
        for item in self._items:
            (late if due(item) < now else kept).append(item)
        if late:
            self._items = kept
            self._cond.notify_all()  # room for a producer that blocks
        return late

    def _head(self, count: int) -> list[T]:
        return [self._items[i] for i in range(count)]

    def _fits(self, max_cost: int, cost: Callable[[T], int]) -> tuple[int, bool]:
        """How many of the oldest items fit ``max_cost`` (at least one, if there is one), and
        whether that fills the batch (the budget is reached, or the next item would pass it)."""
        total = 0
        for n, item in enumerate(self._items):
            total += cost(item)
            if total > max_cost:
                return max(1, n), True
            if total == max_cost:
                return n + 1, True
        return len(self._items), False

    def close(self) -> None:
        """No more puts; get_batch drains what is left, then raises Closed."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._spare.notify_all()

    def take_all(self) -> list[T]:
        """Remove and return everything (used when a drain runs out of time)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items
