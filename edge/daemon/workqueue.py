"""The bounded queue between the receiver and the inference thread.

It never grows past ``capacity``: when full, ``drop-oldest`` evicts the oldest frame and hands
it back so the caller can publish its ``drop`` event; ``block`` makes the producer wait (and
ZeroMQ's high-water mark then drops upstream, which the daemon reports as gaps). The consumer
takes frames in batches: as many as fit a cost budget (the daemon's: model tiles, whatever the
strips' shapes), waiting at most ``max_wait_s`` to fill a batch.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, Literal, TypeVar

T = TypeVar("T")
OverloadPolicy = Literal["drop-oldest", "block"]


class Closed(Exception):
    """The queue was closed and is empty: the consumer is done."""


class WorkQueue(Generic[T]):
    def __init__(self, capacity: int, policy: OverloadPolicy = "drop-oldest") -> None:
        self.capacity = capacity
        self.policy = policy
        self._items: deque[T] = deque()
        self._cond = threading.Condition()
        self._closed = False

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
            self._cond.notify_all()
            return evicted

    def get_batch(
        self,
        max_cost: int,
        max_wait_s: float,
        idle_timeout_s: float = 0.1,
        cost: Callable[[T], int] = lambda _: 1,
    ) -> list[T]:
        """The oldest items whose ``cost`` adds up to at most ``max_cost`` (always at least one).

        Waits up to ``idle_timeout_s`` for the first item, then ``max_wait_s`` more for the batch
        to fill. Returns [] on idle timeout; raises Closed when drained.
        """
        with self._cond:
            if not self._cond.wait_for(lambda: self._items or self._closed, idle_timeout_s):
                return []
            if not self._items:
                raise Closed
            deadline = time.monotonic() + max_wait_s
            count, full = self._fits(max_cost, cost)
            while not full and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
                count, full = self._fits(max_cost, cost)
            batch = [self._items.popleft() for _ in range(count)]
            self._cond.notify_all()
            return batch

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

    def take_all(self) -> list[T]:
        """Remove and return everything (used when a drain runs out of time)."""
        with self._cond:
            items = list(self._items)
            self._items.clear()
            self._cond.notify_all()
            return items
