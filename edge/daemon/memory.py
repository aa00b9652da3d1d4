"""How much memory the daemon's buffers can hold, as a formula of its configuration.

The buffers between the wire and the PUB socket are bounded by the config (docs/operations.md has
the table; what is not is listed at the end); this adds them up for a config and a loaded model pair, so the bound can be stated, printed and
tested rather than guessed. On top of it is the daemon's size at rest: the models' working sets
at ``max_batch``, once per inference worker, which a load it serves reaches too.

Symbols: M = the largest message (``max_message_bytes``, or what the cameras really send);
P, H, W = ``max_frame_pixels``, ``max_frame_height``, ``max_frame_width``; K = segmenter
classes; A = the pixels one model tile stands for (the segmenter's tile; a whole frame, P, for
a resize feed); T = the most tiles one batch holds: ``max_batch``, or the tiles of the largest
legal frame if that has more (with the defaults and 256 px tiles: 50, a 257 x 6375 frame);
B = max(max_batch x A, P), the most frame pixels one batch holds (frames within max_batch
tiles, or one frame alone); S = workers x TICKETS_PER_WORKER + SPARE_TICKETS, the batches
taken and not yet sent.

    received   connections x (rcvhwm + 1) x M      ZeroMQ, per camera connection: rcvhwm
                                                   messages queued, one more held by its engine
    decoding   4 M + 12 x (P + 31 (H + W) + 961)   the receiver's message in hand, decoded
               + 3 MiB                             (JPEG coefficients, output, RGB copy, payload
                                                   copies; edge.daemon.frames states each decoder's)
    queued     queue_size x 3 P                    decoded frames waiting
    inferring  workers x 2 x (3 B + 4 K x T x A)   per worker one batch on the models and one
                                                   waiting for the publisher: pixels, and float32
                                                   maps of every (padded) tile
    finishing  B x (9 K + 4) + P x mask            the publisher stitching one batch (sums,
                                                   counts, averaged bands, allowed classes), then
                                                   encoding one class of one band at a time
    waiting    S x B x event                       result events made, each ticket's batch of
                                                   them waiting for its turn to be sent
               + S x max_batch x K x crop          with publish_crops: a JPEG per class and
                                                   frame (edge.vision.crops bounds each)

Result events are bounded per frame whatever the frames show (at most MAX_COMPONENTS components
and MAX_MASK_RUNS runs per class, and a meta of at most MAX_HEADER_BYTES on the wire, unpacked
to at most META_EXPANSION times that): ``waiting`` is the smaller of that cap for max_batch
frames a batch and the content-based figure below. Within the caps, they are the only term that
depends on what the frames show: components and RLE runs
per frame pixel, summed over classes (``components_per_pixel``, ``runs_per_pixel``). A result
holds, as Python objects, COMPONENT_BYTES per component and at most 2 d + 2 characters per run
(d: the digits of P): event = components x COMPONENT_BYTES + runs x (2 d + 2). Encoding one
class mask costs mask = MASK_BYTES + runs x RUN_TEMP_BYTES + components x COMPONENT_TEMP_BYTES
per band pixel for a moment, plus a whole-frame map (4 K per pixel) where a mask threshold is
<= 0. Unless given, the worst case over content is taken: every class has a run every second
pixel and a component every max(4, min_area) pixels (8-connected components of one pixel need
a pixel of space each way), e.g. a grid of dots. With the default limits that is 98 bytes per
pixel and class held in events, 25 times a class's float32 map: it dominates the bound by far.

Not counted: what a subscriber that falls behind makes the PUB socket keep (up to ``sndhwm``
packed events each: it is the subscriber's to keep up); the ready-made events (drops, rejects,
gaps) the receiver adds to the outbox while the publisher post-processes a batch (unbounded by
the config: as many as it receives meanwhile, ~0.5 kB each); a header's ``meta`` beyond its wire
size (msgpack objects can take ~70 times their bytes in Python); allocator slack.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from edge.daemon.inference import SPARE_TICKETS, TICKETS_PER_WORKER, UNFINISHED_PER_WORKER
from edge.protocol import MAX_HEADER_BYTES
from edge.vision.cascade import Cascade
from edge.vision.crops import CROP_MAX_BYTES, CROP_MAX_SIDE
from edge.vision.postprocess import MAX_COMPONENTS, MAX_MASK_RUNS

RGB = 3  # decoded bytes per pixel at most
FLOAT = 4  # the models' probabilities are float32
# Decoding one frame, per pixel: a progressive JPEG's DCT coefficients (2 bytes per sample, 3
# components), the decoder's output and decode_pixels' RGB copy (PNG needs less: edge.daemon.frames).
DECODE_BYTES = 12
DECODE_FIXED = 3 << 20  # PNG's inflated metadata budget, three copies (edge.daemon.frames)
# One component of a result, as Python objects: the {"bbox", "area_px"} dict (192 bytes with
# its keys table), the bbox list (96), its slot in the list of components (8), and two ints
# past the small-int cache (x, y: 32 each). Measured (tracemalloc): 314 to 332 bytes.
COMPONENT_BYTES = 360
# Encoding one class of one band, per pixel (edge.vision.postprocess): the transposed uint8
# levels, the thresholded mask, the masked levels and the column edges (4 bytes, buffers each
# finishing thread keeps for the next map), the uint8 band itself and room for a raw model's
# float32 map before it is quantised. Kept at the figure the OpenCV labelling needed before:
# tests/test_memory_bound.py measures the peak against it.
MASK_BYTES = 24
# ... and per run: its column, rows and edges as int64 arrays, the labelling's neighbour
# search and union-find arrays (at most RUNS_AT_ONCE runs of other maps beside them), then its
# start and length as Python ints and strings before they are joined.
RUN_TEMP_BYTES = 272
COMPONENT_TEMP_BYTES = 48  # per component: its area and box (int64) and the kept index
# One defect's crop as Python objects: the JPEG at its bound, its dict and bbox list.
CROP_BYTES = CROP_MAX_BYTES + 512
# Making one: the cut, its BGR copy and the encoder's buffer, at the largest crop.
CROP_TEMP_BYTES = 3 * CROP_MAX_SIDE * CROP_MAX_SIDE * RGB
# A header's meta, unpacked, per byte on the wire at most (nested empty maps and lists).
META_EXPANSION = 72


@dataclass(frozen=True, slots=True)
class MemoryBound:
    received: int
    decoding: int
    queued: int
    inferring: int
    finishing: int
    waiting: int
    tiles_per_batch: int  # T

    @property
    def total(self) -> int:
        return (
            self.received
            + self.decoding
            + self.queued
            + self.inferring
            + self.finishing
            + self.waiting
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total": self.total}


def largest_frame_tiles(cascade: Cascade, max_pixels: int, max_height: int, max_width: int) -> int:
    """The most tiles any frame within the limits costs.

    Tiles grow with each side, and the tile rows only change one pixel past a multiple of a
    model's tile height: between two such heights the lowest is widest, so only those count.
    """
    heights = {1, min(max_height, max_pixels)}
    for stage in (cascade.classifier, cascade.segmenter):
        step = stage.inputs.model_hw[0]
        heights.update(range(step + 1, min(max_height, max_pixels) + 1, step))
    return max(cascade.tiles(h, min(max_width, max_pixels // h)) for h in heights)


def memory_bound(
    config: Any,
    cascade: Cascade,
    workers: int,
    connections: int,
    message_bytes: int | None = None,
    *,
    components_per_pixel: float | None = None,
    runs_per_pixel: float | None = None,
) -> MemoryBound:
    """The bound for ``config`` with ``connections`` camera connections.

    ``message_bytes``: the largest message the cameras really send, where known (the received
    term is ``max_message_bytes`` per message otherwise). ``components_per_pixel`` and
    ``runs_per_pixel``: what the frames really make, where known, summed over classes (the
    worst case over content otherwise).
    """
    seg = cascade.segmenter
    classes = seg.spec.num_classes
    pixels = config.max_frame_pixels
    tile_h, tile_w = seg.inputs.model_hw
    area = pixels if seg.inputs.feed.mode == "resize" else tile_h * tile_w
    tiles = max(
        config.max_batch,
        largest_frame_tiles(cascade, pixels, config.max_frame_height, config.max_frame_width),
    )
    per_message = min(config.max_message_bytes, message_bytes or config.max_message_bytes)
    padded = pixels + 31 * (config.max_frame_height + config.max_frame_width) + 961
    if components_per_pixel is None:
        components_per_pixel = sum(1 / max(4, m) for m in seg.spec.per_class("min_area"))
    if runs_per_pixel is None:
        runs_per_pixel = classes / 2
    run_chars = 2 * len(str(pixels)) + 2
    event = components_per_pixel * COMPONENT_BYTES + runs_per_pixel * run_chars
    # Whatever the content, a result lists at most MAX_COMPONENTS components and MAX_MASK_RUNS
    # runs per class (edge.vision.postprocess), and a frame's meta is at most MAX_HEADER_BYTES on the
    # wire; a batch holds at most max_batch frames (each is one tile at least).
    meta = META_EXPANSION * MAX_HEADER_BYTES
    event_cap = classes * (MAX_COMPONENTS * COMPONENT_BYTES + MAX_MASK_RUNS * run_chars) + meta
    # One class at a time: no more than one class's worst.
    mask = (
        MASK_BYTES
        + min(runs_per_pixel, 0.5) * RUN_TEMP_BYTES
        + min(components_per_pixel, 0.5) * COMPONENT_TEMP_BYTES
    )
    if min(seg.spec.per_class("mask")) <= 0:
        mask += FLOAT * classes  # strip_defects then thresholds the frame's whole map
    tickets = workers * TICKETS_PER_WORKER + SPARE_TICKETS
    batch = max(config.max_batch * area, pixels)  # B
    maps = tiles * area * FLOAT * classes
    crops = bool(config.publish_crops)
    return MemoryBound(
        received=connections * (config.rcvhwm + 1) * per_message,
        decoding=4 * per_message + DECODE_BYTES * padded + DECODE_FIXED,
        queued=config.queue_size * (pixels * RGB + meta),
        inferring=workers * (1 + UNFINISHED_PER_WORKER) * (batch * RGB + maps),
        finishing=batch * ((2 * FLOAT + 1) * classes + FLOAT)
        + round(pixels * mask)
        + crops * CROP_TEMP_BYTES,
        waiting=round(tickets * min(batch * event, config.max_batch * event_cap))
        + crops * tickets * config.max_batch * classes * CROP_BYTES,
        tiles_per_batch=tiles,
    )
