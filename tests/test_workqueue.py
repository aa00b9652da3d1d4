from __future__ import annotations

import threading
import time

import pytest

from edge.daemon.workqueue import Closed, WorkQueue


def test_drop_oldest_evicts_and_returns_the_oldest() -> None:
    q: WorkQueue[int] = WorkQueue(3)
    assert [q.put(i) for i in range(3)] == [None, None, None]
    assert q.put(3) == 0
    assert q.put(4) == 1
    assert len(q) == 3
    assert q.get_batch(10, 0) == [2, 3, 4]


def test_batch_takes_at_most_max_items_and_waits_to_fill() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    q.put(1)
    threading.Timer(0.05, q.put, args=(2,)).start()
    assert q.get_batch(2, max_wait_s=5.0) == [1, 2]  # returned as soon as it was full
    for i in range(5):
        q.put(i)
    assert q.get_batch(3, 0) == [0, 1, 2]


def test_idle_returns_empty_and_close_drains_then_raises() -> None:
    q: WorkQueue[int] = WorkQueue(4)
    assert q.get_batch(4, 0, idle_timeout_s=0.01) == []
    q.put(7)
    q.close()
    assert q.get_batch(4, 1.0) == [7]
    with pytest.raises(Closed):
        q.get_batch(4, 1.0)


def test_block_policy_waits_for_room_and_gives_the_item_back_on_stop() -> None:
    q: WorkQueue[int] = WorkQueue(1, "block")
    q.put(1)
    stop = threading.Event()
    threading.Timer(0.05, stop.set).start()
    start = time.monotonic()
    assert q.put(2, stop=stop) == 2  # never queued: the caller must account for it
    assert time.monotonic() - start >= 0.04
    assert q.take_all() == [1]
    consumer = threading.Timer(0.05, q.get_batch, args=(1, 0))
    q.put(3)
    consumer.start()
    assert q.put(4) is None  # waited until the consumer made room
    assert q.take_all() == [4]


def test_a_batch_is_bounded_by_cost_not_by_count() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    for cost in (16, 16, 16, 7):
        q.put(cost)
    # Items are their own cost here: two 16-tile strips fill a 32-tile budget.
    assert q.get_batch(32, 0, cost=lambda c: c) == [16, 16]
    assert q.get_batch(32, 0, cost=lambda c: c) == [16, 7]
    q.put(40)
    assert q.get_batch(32, 0, cost=lambda c: c) == [40]  # bigger than the budget: alone


def test_a_batch_that_reached_its_budget_does_not_wait_for_more() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    q.put(16)
    q.put(16)
    start = time.monotonic()
    assert q.get_batch(32, max_wait_s=5.0, cost=lambda c: c) == [16, 16]
    assert time.monotonic() - start < 1.0
