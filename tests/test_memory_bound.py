"""The memory bound of edge.memory: the formula on the tiny models, the per-pixel costs it charges
for result events against what the worst content really makes, and a real daemon process under
hostile but legal traffic staying below the bound its own config gives."""

from __future__ import annotations

import time
import tomllib
import tracemalloc
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import zmq

from edge.daemon.config import Config, load_config
from edge.daemon.frames import Frame
from edge.daemon.inference import SPARE_TICKETS, TICKETS_PER_WORKER
from edge.daemon.memory import META_EXPANSION, MemoryBound, largest_frame_tiles, memory_bound
from edge.daemon.sinks import result_events
from edge.protocol import MAX_HEADER_BYTES, FrameHeader, encode_frame
from edge.vision.cascade import Cascade
from tests.conftest import gray_strip
from tests.daemon_process import DaemonProcess

SOURCE = "tcp://127.0.0.1:5555"
PER_FRAME = ("result", "reject", "drop")


@pytest.fixture(scope="module")
def cascade(tiny_repo: Path) -> Cascade:
    return Cascade.load(tiny_repo, threads=1)


def config(tiny_repo: Path, **keys: Any) -> Config:
    return load_config(None, bind_sources=[SOURCE], models=tiny_repo, **keys)


def bound(tiny_repo: Path, cascade: Cascade, workers: int = 2, connections: int = 2,
          message_bytes: int | None = None, content: dict[str, float] | None = None,
          **keys: Any) -> MemoryBound:  # fmt: skip
    cfg = config(tiny_repo, **keys)
    return memory_bound(cfg, cascade, workers, connections, message_bytes, **(content or {}))


# -- the formula ------------------------------------------------------------------------------


def test_tiles_per_batch_is_max_batch_or_the_largest_legal_frames_tiles(
    tiny_repo: Path, cascade: Cascade
) -> None:
    # The frame with the most tiles is not the tallest: 257 x 6375 needs 2 rows of 25 tiles.
    assert cascade.tiles(1024, 1600) == 28
    assert cascade.tiles(257, 6375) == 50
    assert bound(tiny_repo, cascade).tiles_per_batch == 50  # the defaults: over max_batch 32
    assert bound(tiny_repo, cascade, max_batch=64).tiles_per_batch == 64
    assert bound(tiny_repo, cascade, max_batch=1).tiles_per_batch == 50
    small = {"max_frame_pixels": 256 * 1600, "max_frame_height": 256, "max_frame_width": 1600}
    assert bound(tiny_repo, cascade, **small).tiles_per_batch == 32
    assert bound(tiny_repo, cascade, max_batch=4, **small).tiles_per_batch == 7
    # Only the heights one past a tile row matter: the same as trying every legal height.
    for pixels, height, width in [(1638400, 1024, 6400), (500_000, 700, 900), (1000, 1024, 64)]:
        every = max(cascade.tiles(h, min(width, pixels // h)) for h in range(1, height + 1))
        assert largest_frame_tiles(cascade, pixels, height, width) == every
    # Within the protocol's limit, at once: 32 x 32 tiles.
    assert largest_frame_tiles(cascade, 8192 * 8192, 8192, 8192) == 1024


def test_each_term_follows_its_config_key(tiny_repo: Path, cascade: Cascade) -> None:
    mb = 1_000_000
    base = bound(tiny_repo, cascade, message_bytes=mb)

    def changed(other: MemoryBound) -> set[str]:
        fields = ("received", "decoding", "queued", "inferring", "finishing", "waiting")
        return {f for f in fields if getattr(other, f) != getattr(base, f)}

    # ZeroMQ: rcvhwm messages per connection and one more its engine holds.
    assert base.received == 2 * (200 + 1) * mb
    more = bound(tiny_repo, cascade, message_bytes=mb, rcvhwm=400)
    assert changed(more) == {"received"} and more.received == 2 * 401 * mb
    assert bound(tiny_repo, cascade, connections=4, message_bytes=mb).received == 2 * base.received
    # Without the cameras' real message size, max_message_bytes is what a message may be.
    assert bound(tiny_repo, cascade).received == 2 * 201 * 32 * 1024 * 1024
    smaller = bound(tiny_repo, cascade, message_bytes=mb, max_message_bytes=mb // 2)
    assert changed(smaller) == {"received", "decoding"}
    # The queue: decoded RGB frames of max_frame_pixels, each with its meta unpacked.
    assert base.queued == 16 * (1638400 * 3 + META_EXPANSION * MAX_HEADER_BYTES)
    longer = bound(tiny_repo, cascade, message_bytes=mb, queue_size=32)
    assert changed(longer) == {"queued"} and longer.queued == 2 * base.queued
    # Workers: two batches each on their maps, and their tickets' events.
    one = bound(tiny_repo, cascade, workers=1, message_bytes=mb)
    assert changed(one) == {"inferring", "waiting"}
    assert one.inferring * 2 == base.inferring
    tickets = (TICKETS_PER_WORKER + SPARE_TICKETS, 2 * TICKETS_PER_WORKER + SPARE_TICKETS)
    assert one.waiting * tickets[1] == pytest.approx(base.waiting * tickets[0], rel=1e-6)
    # Per worker: 50 tiles of 4 float32 maps of 256 x 256, and 32 tiles' pixels (RGB).
    assert base.inferring == 2 * 2 * (50 * 65536 * 16 + 32 * 65536 * 3)
    # A bigger max_batch is more tiles, pixels and events per batch.
    wider = bound(tiny_repo, cascade, message_bytes=mb, max_batch=64)
    assert changed(wider) == {"inferring", "finishing", "waiting"}
    assert wider.inferring > base.inferring
    assert wider.waiting == pytest.approx(2 * base.waiting, rel=1e-6)
    # Frame limits: queued frames, decoding, the tiles of the largest frame, one band's mask.
    for key, value in [("max_frame_pixels", 409600), ("max_frame_height", 256),
                       ("max_frame_width", 1600)]:  # fmt: skip
        assert all(v <= b for v, b in zip(bound(tiny_repo, cascade, message_bytes=mb,
                   **{key: value}).as_dict().values(), base.as_dict().values(), strict=True))  # fmt: skip
    tight = bound(tiny_repo, cascade, message_bytes=mb, max_frame_pixels=409600)
    # (Runs are shorter strings too: their starts have fewer digits.)
    assert changed(tight) == {"decoding", "queued", "inferring", "finishing", "waiting"}
    assert tight.tiles_per_batch == 32 and tight.queued < base.queued
    # Content: events hold components and runs; none (no defects) hold nothing.
    clean = bound(tiny_repo, cascade, message_bytes=mb,
                  content={"components_per_pixel": 0, "runs_per_pixel": 0})  # fmt: skip
    assert clean.waiting == 0 and changed(clean) == {"finishing", "waiting"}
    assert clean.finishing < base.finishing
    dots = {"components_per_pixel": 0.04, "runs_per_pixel": 0.04}
    assert 0 < bound(tiny_repo, cascade, message_bytes=mb, content=dots).waiting < base.waiting
    # The worst content (a dot every other pixel in all 4 classes) dominates the default bound.
    assert base.waiting > base.total / 2


def _event_cost(cascade: Cascade, image: np.ndarray) -> tuple[float, float, dict[str, float]]:
    """(bytes its result event holds, peak bytes while it is made, per pixel), and its content."""
    frame = Frame(FrameHeader("cam", 0, 0, "raw", image.shape), image)
    results = cascade.finish(cascade.infer([image]))
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        ((_, event),) = result_events(cascade, [frame], results)
        held, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    pixels = image.shape[0] * image.shape[1]
    content = {
        "components_per_pixel": sum(len(d["components"]) for d in event["defects"]) / pixels,
        "runs_per_pixel": sum(len(d["mask_rle"].split()) // 2 for d in event["defects"]) / pixels,
    }
    return (held - start) / pixels, (peak - start) / pixels, content


def test_result_events_cost_no_more_than_the_bound_charges_even_for_the_worst_content(
    tiny_repo: Path, cascade: Cascade
) -> None:
    height, width = 64, 1024  # one band of 4 tiles
    grid = gray_strip(128, height, width)
    grid[::2, ::2], grid[1::2, 1::2] = 0, 255  # a component and a run every 4 px, 4 classes
    comb = gray_strip(128, height, width)
    comb[::2], comb[:, 0] = 0, 0  # 2 components, a run every other pixel in 2 classes
    dots = gray_strip(128, height, width)
    dots[::7, ::7] = 0
    cfg = config(tiny_repo, max_frame_pixels=height * width, max_frame_height=height,
                 max_frame_width=width, max_batch=1)  # fmt: skip
    worst = memory_bound(cfg, cascade, 1, 1, 1)
    for name, image in [("grid", grid), ("comb", comb), ("dots", dots)]:
        held, peak, content = _event_cost(cascade, image)
        charged = memory_bound(cfg, cascade, 1, 1, 1, **content)
        tickets = TICKETS_PER_WORKER + SPARE_TICKETS
        # The batch is this one frame: waiting charges each ticket its events, finishing the
        # stitching and one class's encoding at a time.
        event = charged.waiting / tickets / (height * width)
        stitch = height * width * (9 * 4 + 4)
        encoding = (charged.finishing - stitch) / (height * width)
        print(f"{name}: {content}; event {held:.0f} B/px (charged {event:.0f}), "
              f"made with a peak of {peak:.0f} B/px (charged {event + encoding:.0f})")  # fmt: skip
        assert held <= event, name
        assert peak <= event + encoding, name
        assert charged.waiting <= worst.waiting and charged.finishing <= worst.finishing, name


# -- a real daemon ----------------------------------------------------------------------------

OVERLOAD_SECONDS = 5.0
WARM_UP_ROUNDS = 3
JPEG_EVERY_S = 1.0
# What glibc's allocator keeps beyond the live bytes the bound counts: freed chunks kept in the
# heaps of the daemon's threads (receiver, publisher, 2 workers, ZeroMQ's I/O thread).
ALLOCATOR_SLACK_MB = 64.0
MIB = 1 << 20  # /proc's kB are KiB: the MB here are MiB


def hostile_frames() -> dict[str, np.ndarray]:
    """Legal frames (for the default limits) on which every tile of the tiny models is segmented
    and every dot is a component and a run in 2 classes."""
    frames = {}
    for name, (height, width) in {
        "strip": (64, 4096),  # 16 tiles in one row: 2 strips are a full batch
        "tall": (1024, 1600),  # the largest frame: 28 tiles
        "wide": (257, 6375),  # the legal frame with the most tiles: 50, over max_batch
    }.items():
        image = gray_strip(128, height, width)
        image[::7, ::7] = 0
        frames[name] = image
    return frames


def huge_jpeg() -> bytes:
    """A legal (64 Mpx) 8192 x 8192 JPEG of 787 kB with a black block in each of its 1024
    tiles: decoded and inferred, every tile would be segmented (GBs of maps)."""
    image = gray_strip(128, 8192, 8192)
    for dy in range(8):
        for dx in range(8):
            image[96 + dy :: 256, 96 + dx :: 256] = 0
    return cv2.imencode(".jpg", image)[1].tobytes()


def message(camera: str, seq: int, image: np.ndarray | None, jpeg: bytes = b"") -> list[bytes]:
    if image is not None:
        header = FrameHeader(camera, seq, time.time_ns(), "raw", image.shape)
        return [bytes(p) for p in encode_frame(header, image.tobytes())]
    header = FrameHeader(camera, seq, time.time_ns(), "jpeg", (8192, 8192))
    return [bytes(p) for p in encode_frame(header, jpeg)]


def summary(body: dict[str, Any]) -> dict[str, Any]:
    """What the test keeps of an event (a result of a large dotted frame is ~23 MB in Python)."""
    kept = {k: body.get(k) for k in ("kind", "camera", "seq", "reason", "shape")}
    if body["kind"] == "result":
        kept["components"] = sum(len(d["components"]) for d in body["defects"])
        kept["runs"] = sum(d["mask_rle"].count(" ") // 2 + 1 for d in body["defects"])
    return kept


def run_daemon_under_hostile_traffic(tiny_repo: Path, toml: str, *flags: str) -> dict[str, Any]:
    """A daemon process warmed up on full batches of every frame kind, then two cameras offering
    it those frames as fast as loopback takes them for OVERLOAD_SECONDS, each second an 8192 x
    8192 JPEG; returns what was sent, seen and measured."""
    frames, jpeg = hostile_frames(), huge_jpeg()
    flags = ("--workers", "2", "--log-level", "error", *flags)
    with DaemonProcess(tiny_repo, *flags, config=toml) as daemon:
        # Only a summary of each per-frame event: a result of a large dotted frame is ~23 MB.
        listener = daemon.listener(lambda b: summary(b) if b["kind"] in PER_FRAME else None)
        listener.start(first_within_s=60)
        events, statuses = listener.events, listener.statuses
        # XPUB_NODROP: full means "not sent" (Again), never a silent loss, so every JPEG
        # reaches the daemon; SNDTIMEO bounds how long a blocking send waits for room.
        cams = {name: daemon.camera(SNDHWM=20, XPUB_NODROP=1, SNDTIMEO=10000)
                for name in ("cam1", "cam2")}  # fmt: skip
        sent = dict.fromkeys(cams, 0)
        jpegs: list[tuple[str, int]] = []
        largest = 0

        def send(name: str, image: np.ndarray | None, flags: int = 0) -> bool:
            nonlocal largest
            parts = message(name, sent[name], image, jpeg)
            try:
                cams[name].send_multipart(parts, flags)
            except zmq.Again:
                return False  # our own buffer is full: not sent, so not counted
            largest = max(largest, sum(len(p) for p in parts))
            sent[name] += 1
            return True

        # Warm up on full batches the daemon serves, so both workers' working sets at
        # max_batch and the publisher's on the largest batches are reached first: that is the
        # daemon's size, not an effect of overload.
        deadline = time.monotonic() + 60
        for round_ in range(WARM_UP_ROUNDS):
            kinds = ["wide", "tall"] if round_ % 2 else ["tall", "wide"]
            for name, kind in [("cam1", "strip")] * 4 + [("cam2", k) for k in kinds]:
                send(name, frames[kind])
            assert listener.wait_for(
                lambda round_=round_: len(events) >= 6 * (round_ + 1), deadline - time.monotonic()
            ), "warm-up frames were not served"
        warmed_mb = daemon.rss_mb("VmHWM")
        warm_up = len(events)
        start = next_jpeg = time.monotonic()
        turn = 0
        while time.monotonic() - start < OVERLOAD_SECONDS:
            if time.monotonic() >= next_jpeg:
                name = ("cam1", "cam2")[len(jpegs) % 2]
                jpegs.append((name, sent[name]))
                assert send(name, None), "the daemon took no JPEG for 10 s"  # blocking
                next_jpeg += JPEG_EVERY_S
            send("cam1", frames["strip"], zmq.NOBLOCK)
            send("cam2", frames[("tall", "wide")[turn % 2]], zmq.NOBLOCK)
            turn += 1
            time.sleep(0.001)  # the listener (this process) keeps up: nothing piles up in PUB
        elapsed = time.monotonic() - start
        overloaded_mb = daemon.rss_mb("VmHWM")
        time.sleep(0.5)
        daemon.terminate()
        peak_mb = overloaded_mb  # the drain serves what is queued: it counts too
        while daemon.poll() is None:
            try:
                peak_mb = max(peak_mb, daemon.rss_mb("VmHWM"))
            except (OSError, AssertionError):
                break  # exiting
            time.sleep(0.05)
        daemon.wait(60)
        time.sleep(0.5)
    assert daemon.returncode == 0, daemon.stderr[-2000:]
    return {"sent": sent, "jpegs": jpegs, "largest": largest, "events": events,
            "final": statuses[-1]["cameras"], "warm_up": warm_up, "elapsed": elapsed,
            "warmed_mb": warmed_mb, "overloaded_mb": overloaded_mb, "peak_mb": peak_mb}  # fmt: skip


TOML = "rcvhwm = 50\nsndhwm = 100000\nstatus_interval_s = 0.5\ndrain_timeout_s = 4\n"


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for RSS")
def test_hostile_legal_traffic_stays_within_the_memory_bound_of_the_config(
    tiny_repo: Path, cascade: Cascade
) -> None:
    run = run_daemon_under_hostile_traffic(tiny_repo, TOML)
    events, final = run["events"], run["final"]
    results = [e for e in events if e["kind"] == "result"]
    # What the frames make, from their results: a component and a run per dot, in 2 classes.
    pixels = {tuple(e["shape"]): e["shape"][0] * e["shape"][1] for e in results}
    content = {
        "components_per_pixel": max(e["components"] / pixels[tuple(e["shape"])] for e in results),
        "runs_per_pixel": max(e["runs"] / pixels[tuple(e["shape"])] for e in results),
    }
    cfg = load_config(None, bind_sources=[SOURCE], models=tiny_repo, threads=1, workers=2,
                      **tomllib.loads(TOML))  # fmt: skip
    limit = memory_bound(cfg, cascade, 2, len(run["sent"]), run["largest"], **content)
    growth_mb = run["peak_mb"] - run["warmed_mb"]
    served = (len(results) - run["warm_up"]) / run["elapsed"]
    offered = (sum(run["sent"].values()) - run["warm_up"]) / run["elapsed"]
    terms = ", ".join(f"{k} {v / MIB:.0f}" for k, v in limit.as_dict().items()
                      if k != "tiles_per_batch")  # fmt: skip
    print(
        f"\noffered {offered:.0f} frames/s, served {served:.1f}/s; {len(run['jpegs'])} 8192x8192 "
        f"JPEGs; content {content}; peak RSS warmed up {run['warmed_mb']:.0f} MB, overloaded "
        f"{run['overloaded_mb']:.0f} MB, drained {run['peak_mb']:.0f} MB: growth "
        f"{growth_mb:.0f} MB against the bound {limit.total / MIB:.0f} MB + "
        f"{ALLOCATOR_SLACK_MB:.0f} MB slack (MB: {terms}; T {limit.tiles_per_batch})"
    )
    assert growth_mb * MIB < limit.total + ALLOCATOR_SLACK_MB * MIB
    for name in run["sent"]:
        counts = final[name]
        assert counts["received"] == counts["results"] + counts["rejects"] + counts["drops"]
        assert counts["drops"] > 0, "the cameras did not overload the daemon"
        mine = [e for e in events if e["camera"] == name]
        # Exactly one event per received frame, as published.
        assert len(mine) == len({e["seq"] for e in mine}) == counts["received"]
        assert counts["received"] + counts["missing"] <= run["sent"][name]
    by_frame = {(e["camera"], e["seq"]): e for e in events}
    assert len(run["jpegs"]) >= OVERLOAD_SECONDS // JPEG_EVERY_S
    for key in run["jpegs"]:
        # Refused on its header: decoding it alone would cost more than the whole bound.
        assert by_frame[key]["kind"] == "reject", key
        assert "max_frame_height = 1024" in by_frame[key]["reason"], by_frame[key]
