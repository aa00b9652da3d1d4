"""What travels between the daemon's threads after the models: batches, their outcomes, and
each frame's event made and waiting for its turn, and the post-processing that turns the one into
the other (run by the finishing threads: ``edge.daemon.finishers``)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import structlog

from edge import protocol
from edge.daemon.frames import Frame
from edge.daemon.metrics import Metrics
from edge.daemon.sinks import result_events
from edge.protocol import FrameHeader
from edge.vision.cascade import Cascade, Inferred
from edge.vision.replicas import Replicas

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class InferenceFailed:
    """The models failed on a frame alone; ``reason`` is the text of its ``reject``."""

    reason: str


# A run of a batch's frames and what the models made of them: their Inferred, or (for a frame
# alone) InferenceFailed.
Part = tuple[list[Frame], Inferred | InferenceFailed]


@dataclass(slots=True)
class Batch:
    ticket: int  # its place in the output order (edge.daemon.inference)
    parts: list[Part]  # its frames, in order, with their outcomes
    cascade: Cascade  # the one that inferred it: a reload must not split a batch across two


@dataclass(slots=True)
class Result:
    """A frame's result event, made, waiting for its turn (without the frame's pixels)."""

    header: FrameHeader
    received_ns: int  # its latency is stamped when it is sent
    event: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Rejected:
    """A frame's reject event, made, waiting for its turn: ``reason`` says what failed."""

    header: FrameHeader
    reason: str
    event: dict[str, Any]

    @classmethod
    def of(cls, frame: Frame, reason: str) -> Rejected:
        header = frame.header
        event = protocol.reject_event(header.camera, header.seq, reason, header.ts_ns)
        return cls(header, reason, event)


# One frame's event, waiting for its turn to be sent.
Outgoing = Result | Rejected


@dataclass(slots=True)
class Retire:
    """Models replaced by a reload; closed once every batch they inferred is published."""

    replicas: Replicas
    after_ticket: int  # the last ticket the old models served (-1: none)


@dataclass(slots=True)
class Finished:
    """A batch post-processed: its frames' events, in frame order, waiting for its ticket."""

    ticket: int
    outgoing: list[Outgoing]


def post_process(batch: Batch, metrics: Metrics, *, crops: bool = False) -> list[Outgoing]:
    """Every frame's event, in frame order: a result, or a reject naming what failed.

    ``crops``: each defect carries a JPEG crop of its frame (``edge.vision.crops``).
    """
    made: list[Outgoing] = []
    for frames, outcome in batch.parts:
        if isinstance(outcome, InferenceFailed):
            made += [Rejected.of(frame, outcome.reason) for frame in frames]
        else:
            made += _results(batch.cascade, frames, outcome, metrics, crops)
    return made


def _results(
    cascade: Cascade, frames: list[Frame], inferred: Inferred, metrics: Metrics, crops: bool
) -> list[Outgoing]:
    start = time.perf_counter()
    try:
        results = cascade.finish(inferred)
        events = result_events(cascade, frames, results, crops=crops)
    except Exception:
        # Every frame still gets its one event, and the daemon serves on.
        log.exception(
            "post-processing failed",
            throttle=True,
            frames=[f"{f.header.camera}/{f.header.seq}" for f in frames],
        )
        return [
            Rejected.of(f, f"post-processing failed on a {list(f.header.shape)} frame")
            for f in frames
        ]
    metrics.stage("postprocess", time.perf_counter() - start)
    return [
        Result(frame.header, frame.received_ns, event)
        for frame, (_, event) in zip(frames, events, strict=True)
    ]
