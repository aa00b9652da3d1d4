"""Defect crops (publish_crops): bounded boxes and JPEGs, on the tiny models and a live daemon."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.daemon.frames import Frame
from edge.daemon.sinks import result_events
from edge.protocol import FrameHeader, encode_frame
from edge.vision.cascade import Cascade
from edge.vision.crops import CROP_MAX_BYTES, CROP_MAX_SIDE, crop_box, defect_crop, encode_crop
from tests.conftest import gray_strip
from tests.daemon_process import DaemonProcess

NOISE = np.random.default_rng(3)


@pytest.mark.parametrize(
    ("bbox", "expected"),
    [
        ([10, 20, 30, 40], (10, 20, 30, 40)),  # small: the component's own box
        ([100, 0, 1000, 256], (472, 0, 256, 256)),  # wide: the 256 px about its centre
        ([1590, 250, 30, 30], (1590, 250, 10, 6)),  # past the edge: cut to the frame
        ([0, 0, 1, 1], (0, 0, 1, 1)),
    ],
)
def test_crop_box_is_the_components_box_within_the_side_bound(
    bbox: list[int], expected: tuple[int, int, int, int]
) -> None:
    assert crop_box(bbox, 256, 1600) == expected


@pytest.mark.parametrize("shape", [(256, 256), (256, 256, 3)])
def test_even_pure_noise_at_the_largest_side_fits_the_byte_bound(shape: tuple[int, ...]) -> None:
    noise = NOISE.integers(0, 256, shape, dtype=np.uint8)
    data = encode_crop(noise)
    assert len(data) <= CROP_MAX_BYTES
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert decoded.shape == shape


def test_a_colour_crop_keeps_rgb_order() -> None:
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255  # R in the frame's RGB order
    decoded = cv2.imdecode(np.frombuffer(encode_crop(red), np.uint8), cv2.IMREAD_COLOR)
    b, g, r = (int(decoded[..., c].mean()) for c in range(3))  # OpenCV decodes to BGR
    assert r > 240 and g < 15 and b < 15


def test_a_defect_without_components_gets_no_crop() -> None:
    assert defect_crop(gray_strip(), {"components": []}) is None


@pytest.fixture(scope="module")
def cascade(tiny_repo: Path) -> Cascade:
    return Cascade.load(tiny_repo, threads=1)


def dark_patch_strip() -> np.ndarray:
    strip = gray_strip()
    strip[40:100, 300:700] = NOISE.integers(0, 40, (60, 400), dtype=np.uint8)  # dark, textured
    return strip


def test_each_defect_gets_a_crop_of_its_largest_component_only_when_asked(
    cascade: Cascade,
) -> None:
    strip = dark_patch_strip()
    frame = Frame(FrameHeader("cam", 0, 0, "raw", strip.shape), strip)
    results = cascade.finish(cascade.infer([strip]))
    ((_, plain),) = result_events(cascade, [frame], results)
    ((_, cropped),) = result_events(cascade, [frame], results, crops=True)
    assert plain["defects"] and all("crop" not in d for d in plain["defects"])
    assert [d["class_id"] for d in cropped["defects"]] == [d["class_id"] for d in plain["defects"]]
    for defect in cropped["defects"]:
        x, y, w, h = defect["crop"]["bbox"]
        assert (x, y, w, h) == crop_box(defect["components"][0]["bbox"], 256, 1600)
        assert w <= CROP_MAX_SIDE and h <= CROP_MAX_SIDE
        jpeg = defect["crop"]["jpeg"]
        assert isinstance(jpeg, bytes) and len(jpeg) <= CROP_MAX_BYTES
        pixels = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE)
        diff = np.abs(pixels.astype(int) - strip[y : y + h, x : x + w].astype(int))
        assert diff.mean() < 8  # the frame's own pixels there, through JPEG


def test_a_live_daemon_publishes_crops_when_configured(tiny_repo: Path) -> None:
    strip = dark_patch_strip()
    header = FrameHeader("cam", 0, 1, "raw", strip.shape)
    with DaemonProcess(tiny_repo, config="publish_crops = true\n") as daemon:
        listener = daemon.listener().start(first_within_s=60)
        cam = daemon.camera()
        cam.send_multipart(encode_frame(header, strip.tobytes()))
        assert listener.wait_for(lambda: listener.events, 30), daemon.stderr
        (event,) = listener.events
    assert event["kind"] == "result" and event["defects"]
    for defect in event["defects"]:
        assert defect["crop"]["bbox"] == list(crop_box(defect["components"][0]["bbox"], 256, 1600))
        assert cv2.imdecode(np.frombuffer(defect["crop"]["jpeg"], np.uint8), 0) is not None


def test_the_memory_bound_charges_crops_only_when_they_are_published(
    tiny_repo: Path, cascade: Cascade
) -> None:
    from edge.daemon.config import load_config
    from edge.daemon.inference import SPARE_TICKETS, TICKETS_PER_WORKER
    from edge.daemon.memory import CROP_BYTES, CROP_TEMP_BYTES, memory_bound

    def bound(**keys: bool) -> dict[str, int]:
        cfg = load_config(None, bind_sources=["tcp://127.0.0.1:5555"], models=tiny_repo, **keys)
        return memory_bound(cfg, cascade, 2, 1, 1_000_000).as_dict()

    off, on = bound(), bound(publish_crops=True)
    tickets = 2 * TICKETS_PER_WORKER + SPARE_TICKETS
    assert on["waiting"] - off["waiting"] == tickets * 32 * 4 * CROP_BYTES
    assert on["finishing"] - off["finishing"] == CROP_TEMP_BYTES
    assert {k for k in off if off[k] != on[k]} == {"waiting", "finishing", "total"}
