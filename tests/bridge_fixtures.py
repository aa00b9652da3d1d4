"""Shared pieces of the PLC-bridge tests: free ports, a defective strip, polling."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np

from edge.protocol import FrameHeader, encode_frame
from tests.conftest import (
    free_port,  # noqa: F401  (re-exported)
    gray_strip,
)

# A dark patch (tiny segmenter classes 1 "dark" and 3 "very_dark") and a smaller bright one
# (classes 2 "bright" and 4 "very_bright"): known classes, areas and positions.
DARK = (slice(40, 90), slice(300, 420))  # 50 x 120 = 6000 px, centre column 360
BRIGHT = (slice(150, 160), slice(1500, 1590))  # 10 x 90 = 900 px


def defective_strip() -> np.ndarray:
    image = gray_strip()
    image[DARK] = 20
    image[BRIGHT] = 240
    return image


def frame(camera: str, seq: int, image: np.ndarray) -> list[bytes]:
    header = FrameHeader(camera, seq, time.time_ns(), "raw", image.shape)
    return [bytes(p) for p in encode_frame(header, image.tobytes())]


def wait_until(
    condition: Callable[[], Any], timeout_s: float = 30.0, what: str = "condition"
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail naming ``what`` if not."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.05)
