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


def test_a_filling_batch_is_woken_only_once_it_is_full() -> None:
    """Each wake-up costs a context switch: a put that leaves the batch short wakes nobody."""
    q: WorkQueue[int] = WorkQueue(10)
    wakes = []
    notify_all = q._cond.notify_all
    q._cond.notify_all = lambda: (wakes.append(len(q)), notify_all())  # type: ignore[method-assign]
    q.put(1)
    taken: list[list[int]] = []
    consumer = threading.Thread(target=lambda: taken.append(q.get_batch(3, max_wait_s=5.0)))
    consumer.start()
    while q._filling is None:  # the consumer is waiting for its batch to fill
        time.sleep(0.001)
    start = time.monotonic()
    q.put(2)
    assert wakes == [1]  # the first item's put only: the batch is not full yet
    q.put(3)
    consumer.join(timeout=2.0)
    assert taken == [[1, 2, 3]] and time.monotonic() - start < 2.0  # woken when full
    assert wakes[:2] == [1, 3]


# -- spare consumers (the inference workers after the first) ----------------------------------


def wait_until(predicate, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.001)


def test_a_spare_consumer_sleeps_while_another_waits_to_take_the_work() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    taken: list[list[int]] = []
    consumer = threading.Thread(target=lambda: taken.append(q.get_batch(1, 0, idle_timeout_s=5)))
    consumer.start()
    wait_until(lambda: q._takers == 1)
    spare = []
    spare_thread = threading.Thread(target=lambda: spare.append(q.wait_unattended(0.3)))
    spare_thread.start()
    q.put(1)
    consumer.join(2.0)
    spare_thread.join(2.0)
    assert taken == [[1]]
    assert spare == [False]  # never woken for an item a consumer was there to take


def test_a_spare_consumer_is_woken_for_work_nobody_waits_for() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    woken: list[tuple[bool, float]] = []
    start = time.monotonic()
    spare = threading.Thread(
        target=lambda: woken.append((q.wait_unattended(5.0), time.monotonic() - start))
    )
    spare.start()
    time.sleep(0.05)
    q.put(1)  # no consumer inside get_batch: the others are busy
    spare.join(2.0)
    assert woken and woken[0][0] and woken[0][1] < 2.0
    assert q.get_batch(1, 0) == [1]


def test_work_left_behind_by_a_batch_wakes_a_spare() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    for i in range(3):
        q.put(i)
    woken = []
    # The consumer takes two of three and leaves: the third is left for a spare.
    wait_until(lambda: q.get_batch(2, 0) == [0, 1])
    spare = threading.Thread(target=lambda: woken.append(q.wait_unattended(2.0)))
    spare.start()
    spare.join(3.0)
    assert woken == [True]
    assert q.get_batch(2, 0) == [2]


def test_closing_wakes_the_spares() -> None:
    q: WorkQueue[int] = WorkQueue(10)
    woken = []
    spare = threading.Thread(target=lambda: woken.append(q.wait_unattended(5.0)))
    spare.start()
    time.sleep(0.05)
    q.close()
    spare.join(2.0)
    assert woken == [True]
    with pytest.raises(Closed):
        q.get_batch(1, 0)


# -- deadlines (max_latency_ms): items are (name, due) on a fake clock --------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def due(item: tuple[str, float]) -> float:
    return item[1]


def test_items_past_their_deadline_are_never_handed_out_and_keep_their_order() -> None:
    clock = FakeClock()
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    for item in [("a", 1.0), ("b", 5.0), ("c", 2.0), ("d", 9.0), ("e", 3.0), ("f", 8.0)]:
        q.put(item)
    clock.now = 4.0
    gone: list[tuple[str, float]] = []
    batch = q.get_batch(3, 0, due=due, expired=gone.append, clock=clock)
    assert [name for name, _ in gone] == ["a", "c", "e"]  # in queue order, each once
    assert [name for name, _ in batch] == ["b", "d", "f"]  # the rest in theirs, none late
    assert len(q) == 0


def test_an_item_exactly_at_its_deadline_is_still_served() -> None:
    clock = FakeClock()
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    q.put(("a", 4.0))
    clock.now = 4.0
    gone: list[tuple[str, float]] = []
    assert q.get_batch(3, 0, due=due, expired=gone.append, clock=clock) == [("a", 4.0)]
    assert gone == []


def test_a_queue_of_expired_items_gives_an_empty_batch_then_closed() -> None:
    clock = FakeClock()
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    q.put(("a", 1.0))
    q.put(("b", 2.0))
    q.close()
    clock.now = 3.0
    gone: list[tuple[str, float]] = []
    assert q.get_batch(3, 1.0, due=due, expired=gone.append, clock=clock) == []
    assert gone == [("a", 1.0), ("b", 2.0)]
    with pytest.raises(Closed):
        q.get_batch(3, 1.0, due=due, expired=gone.append, clock=clock)


def test_the_budget_counts_only_what_is_still_in_time() -> None:
    clock = FakeClock()
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    for item in [("late", 1.0), ("a", 9.0), ("b", 9.0), ("c", 9.0)]:
        q.put(item)
    clock.now = 2.0
    gone: list[tuple[str, float]] = []
    batch = q.get_batch(2, 0, due=due, expired=gone.append, clock=clock)
    assert [name for name, _ in batch] == ["a", "b"]
    assert gone == [("late", 1.0)]


def test_every_item_gets_exactly_one_outcome_under_eviction_and_expiry() -> None:
    """Puts that evict, takes that expire, a clock that moves: each item ends up once in a
    batch, once as expired or once as evicted, and no batch holds an item past its deadline."""
    clock = FakeClock()
    q: WorkQueue[tuple[str, float]] = WorkQueue(11)
    outcomes: list[tuple[str, float]] = []
    put: list[tuple[str, float]] = []
    kinds = dict.fromkeys(("served", "expired", "evicted"), 0)
    for step in range(400):
        clock.now = step * 0.5
        for k in range(step % 4):  # bursts of 0 to 3 items, each due 0.5 to 3.5 s from now
            item = (f"{step}.{k}", clock.now + 0.5 + (step * 7 + k) % 4)
            put.append(item)
            evicted = q.put(item)
            if evicted is not None:
                outcomes.append(evicted)
                kinds["evicted"] += 1
        if step % 3 == 0:
            gone: list[tuple[str, float]] = []
            batch = q.get_batch(2, 0, due=due, expired=gone.append, clock=clock)
            assert all(d >= clock.now for _, d in batch), "a late item was handed out"
            assert all(d < clock.now for _, d in gone)
            outcomes += batch + gone
            kinds["served"] += len(batch)
            kinds["expired"] += len(gone)
    assert min(kinds.values()) > 20, kinds  # the test exercises all three
    outcomes += q.take_all()
    assert sorted(outcomes) == sorted(put)
    assert len(set(outcomes)) == len(outcomes)


def test_a_partial_batch_stops_waiting_at_its_first_deadline_and_is_served() -> None:
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    item = ("a", time.monotonic() + 0.1)
    q.put(item)
    gone: list[tuple[str, float]] = []
    start = time.monotonic()
    batch = q.get_batch(4, max_wait_s=5.0, due=due, expired=gone.append)
    assert time.monotonic() - start < 1.0, "the batch waited past its item's deadline"
    assert batch == [item] and gone == []  # taken at its deadline, not dropped for waiting


def test_expired_items_are_handed_over_after_the_lock_is_let_go() -> None:
    clock = FakeClock()
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    q.put(("a", 1.0))
    q.put(("b", 9.0))
    clock.now = 2.0
    others_got_in: list[bool] = []

    def expired(item: tuple[str, float]) -> None:
        # The daemon's drop path takes other locks; another thread must be able to queue
        # meanwhile (the receiver does), so the queue's lock is not held here.
        other = threading.Thread(target=q.put, args=(("c", 9.0),))
        other.start()
        other.join(2.0)
        others_got_in.append(not other.is_alive())

    assert q.get_batch(1, 0, due=due, expired=expired, clock=clock) == [("b", 9.0)]
    assert others_got_in == [True]
    assert q.take_all() == [("c", 9.0)]


def test_a_deadline_without_somewhere_for_expired_items_is_refused() -> None:
    q: WorkQueue[tuple[str, float]] = WorkQueue(10)
    with pytest.raises(ValueError, match="expired"):
        q.get_batch(1, 0, due=due)
