"""Finishing threads and the publisher put inferred batches back in the order they left the
queue, as the daemon wires them (edge.daemon.finishers -> edge.daemon.publisher)."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from edge.daemon.config import load_config
from edge.daemon.finishers import Finishers
from edge.daemon.inference import infer_parts
from edge.daemon.ledger import Ledger
from edge.daemon.metrics import Metrics
from edge.daemon.outcomes import Batch, InferenceFailed, Retire
from edge.daemon.publisher import STOP, PublishLoop
from edge.daemon.sinks import EventPublisher
from edge.daemon.sources import read_frame
from edge.protocol import VERSION, event_topic, parse_event
from edge.vision.replicas import load_replicas, plan_workers
from tests.conftest import gray_strip
from tests.test_server import frame_parts


class Running:
    """A PublishLoop on its own thread, publishing on loopback, with a SUB that reads it, and
    two finishing threads in front of it: ``hand`` gives them a batch as a worker does."""

    def __init__(self, tiny_repo: Path) -> None:
        self.context = zmq.Context()
        self.outbox: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.tickets = threading.BoundedSemaphore(8)
        self.unfinished = threading.BoundedSemaphore(8)
        config = load_config(
            None, models=tiny_repo, bind_sources=["tcp://127.0.0.1:*"], status_interval_s=0.05
        )
        metrics = Metrics(lambda: 0, lambda: 0.0)
        loop = PublishLoop(
            self.outbox,
            self.tickets,
            Ledger(),
            metrics,
            lambda: {"v": VERSION, "kind": "status"},
            lambda: config,
        )
        self.finishers = Finishers(self.outbox, self.unfinished, metrics, 2)
        self.finishing = [
            threading.Thread(target=self.finishers.run, args=(i,), daemon=True) for i in range(2)
        ]
        for thread in self.finishing:
            thread.start()
        publisher = EventPublisher(self.context, "tcp://127.0.0.1:*")
        self.sub = self.context.socket(zmq.SUB)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(publisher.endpoint)
        self.thread = threading.Thread(target=loop.run, args=(publisher,), daemon=True)
        self.thread.start()
        # Statuses come every 50 ms: the first one seen means the subscription is live.
        assert self.sub.poll(10_000), "no status from the publisher"
        self.sub.recv_multipart()

    def receive_until(self, marker: str) -> list[dict[str, Any]]:
        """Events up to the marker event ``{"kind": marker}`` (put on the outbox after)."""
        self.outbox.put((event_topic("test"), {"v": VERSION, "kind": marker}))
        events = []
        while True:
            assert self.sub.poll(10_000), f"no {marker!r} from the publisher"
            _, body = parse_event(self.sub.recv_multipart())
            if body.get("kind") == "status":
                continue
            if body.get("kind") == marker:
                return events
            events.append(body)

    def hand(self, item: Any) -> None:
        self.finishers.put(item)

    def stop(self) -> None:
        self.finishers.stop()
        for thread in self.finishing:
            thread.join(10)
        self.outbox.put(STOP)
        self.thread.join(10)
        self.sub.close(0)
        self.context.term()


@pytest.fixture
def running(tiny_repo: Path) -> Iterator[Running]:
    loop = Running(tiny_repo)
    yield loop
    if loop.thread.is_alive():
        loop.stop()


def batch(cascade: Any, ticket: int, seqs: list[int], running: Running, image: Any = None) -> Batch:
    image = gray_strip() if image is None else image
    frames = [read_frame(frame_parts("cam1", seq, image)) for seq in seqs]
    # As a worker holds them: a ticket from before it takes the batch, an unfinished permit
    # from before it hands the batch over.
    assert running.tickets.acquire(timeout=1) and running.unfinished.acquire(timeout=1)
    return Batch(ticket, infer_parts(cascade, frames), cascade)


def test_batches_finished_out_of_turn_are_published_in_ticket_order(
    running: Running, tiny_repo: Path
) -> None:
    replicas = load_replicas(tiny_repo, plan=plan_workers(1, 1, cores=1, gpu=False))
    cascade = replicas.first
    try:
        running.hand(batch(cascade, 2, [4, 5], running))
        running.hand(batch(cascade, 1, [2, 3], running))
        assert running.receive_until("held") == [], "published before ticket 0 came"
        running.hand(batch(cascade, 0, [0, 1], running))
        events = running.receive_until("all")
        assert [(e["kind"], e["seq"]) for e in events] == [("result", s) for s in range(6)]
        for _ in range(8):  # every permit was given back: post-processed, then sent
            assert running.tickets.acquire(timeout=1) and running.unfinished.acquire(timeout=1)
    finally:
        running.stop()
        replicas.close()


def results(running: Running, count: int) -> list[int]:
    """The seqs of the next ``count`` result events (finished on another thread: waited for)."""
    seqs: list[int] = []
    while len(seqs) < count:
        assert running.sub.poll(10_000), "no result from the publisher"
        _, body = parse_event(running.sub.recv_multipart())
        if body.get("kind") == "result":
            seqs.append(body["seq"])
    return seqs


def flagged_strip() -> Any:
    strip = gray_strip()
    strip[::7, ::7] = 0  # every tile flagged and segmented: maps for the finishing threads
    return strip


def test_on_a_quiet_line_the_first_finishing_thread_finishes_every_batch(
    running: Running, tiny_repo: Path
) -> None:
    """The spare sleeps while the first keeps up, so the maps stay in one core's cache."""
    replicas = load_replicas(tiny_repo, plan=plan_workers(1, 1, cores=1, gpu=False))
    try:
        for ticket in range(6):
            running.hand(batch(replicas.first, ticket, [ticket], running, flagged_strip()))
            assert results(running, 1) == [ticket]
        assert running.finishers.finished_by == [6, 0]
    finally:
        running.stop()
        replicas.close()


def test_a_batch_that_waits_while_the_first_thread_is_busy_goes_to_the_spare(
    running: Running, tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from edge.daemon import finishers

    release = threading.Event()
    real = finishers.post_process

    def held_for_ticket_0(batch: Batch, *args: Any, **kwargs: Any) -> Any:
        if batch.ticket == 0:
            assert release.wait(10)
        return real(batch, *args, **kwargs)

    monkeypatch.setattr(finishers, "post_process", held_for_ticket_0)
    replicas = load_replicas(tiny_repo, plan=plan_workers(1, 1, cores=1, gpu=False))
    try:
        running.hand(batch(replicas.first, 0, [0], running, flagged_strip()))
        running.hand(batch(replicas.first, 1, [1], running, flagged_strip()))
        deadline = time.monotonic() + 5
        while running.finishers.finished_by[1] < 1:
            assert time.monotonic() < deadline, "the spare never took the waiting batch"
            time.sleep(0.01)
        release.set()
        assert results(running, 2) == [0, 1]  # in ticket order
        assert running.finishers.finished_by == [1, 1]
    finally:
        release.set()
        running.stop()
        replicas.close()


def test_retired_models_close_only_after_their_last_batch_is_published(
    running: Running, tiny_repo: Path
) -> None:
    plan = plan_workers(1, 1, cores=1, gpu=False)
    old = load_replicas(tiny_repo, plan=plan)
    running.hand(batch(old.first, 1, [1], running))
    running.hand(Retire(old, after_ticket=1))
    assert running.receive_until("retire queued") == []
    assert hasattr(old.first.classifier.backend, "session"), "closed while a batch waited"
    running.hand(batch(old.first, 0, [0], running))
    assert [e["seq"] for e in running.receive_until("published")] == [0, 1]
    assert not hasattr(old.first.classifier.backend, "session"), "never closed"
    running.stop()


def test_a_frame_the_models_fail_on_is_rejected_and_the_rest_get_results(
    tiny_repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    replicas = load_replicas(tiny_repo, plan=plan_workers(1, 1, cores=1, gpu=False))
    cascade = replicas.first
    real_infer = cascade.infer

    def infer_failing_on_marked(images: list[Any]) -> Any:
        if any(image[0, 0] == 7 for image in images):  # a fault this one frame triggers
            raise RuntimeError("simulated model fault")
        return real_infer(images)

    monkeypatch.setattr(cascade, "infer", infer_failing_on_marked)
    marked = gray_strip()
    marked[0, 0] = 7
    try:
        frames = [
            read_frame(frame_parts("cam1", seq, image))
            for seq, image in enumerate([gray_strip(), marked, gray_strip()])
        ]
        parts = infer_parts(cascade, frames)
    finally:
        replicas.close()
    outcomes = [(f.header.seq, isinstance(o, InferenceFailed)) for fs, o in parts for f in fs]
    assert outcomes == [(0, False), (1, True), (2, False)]
    (failed,) = [o for _, o in parts if isinstance(o, InferenceFailed)]
    assert failed.reason == "inference failed on a [256, 1600] frame"
