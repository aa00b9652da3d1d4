"""InputAdapter: a strip's tiles in one strided view are the tiles ``pixels_for`` cuts."""

from __future__ import annotations

import numpy as np
import pytest

from edge.vision.modelspec import ModelSpec
from edge.vision.preprocess import InputAdapter


def _adapter(channels: int, order: str = "rgb", mode: str = "tile") -> InputAdapter:
    spec = ModelSpec(
        name="cls",
        role="classifier",
        classes=("a",),
        input={"channels": channels, "color_order": order, "layout": "NHWC"},
        feed={"mode": mode},
    )
    return InputAdapter(spec)


@pytest.mark.parametrize(("strip_channels", "model_channels"), [(None, 1), (1, 1), (3, 3)])
def test_row_for_gives_what_pixels_for_gives(
    strip_channels: int | None, model_channels: int
) -> None:
    shape = (256, 1600) if strip_channels is None else (256, 1600, strip_channels)
    strip = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    adapter = _adapter(model_channels)
    windows = adapter.windows(256, 1600)
    row = adapter.row_for(strip, windows[2:6])
    assert row is not None and row.shape == (4, 256, 256, model_channels)
    for n, window in enumerate(windows[2:6]):
        np.testing.assert_array_equal(row[n], adapter.pixels_for(strip, window))


@pytest.mark.parametrize(
    ("strip_shape", "adapter"),
    [
        ((256, 1600, 3), _adapter(3, "bgr")),  # channels reversed: a copy
        ((256, 1600), _adapter(3)),  # grey to 3 channels: a copy
        ((256, 1600, 3), _adapter(1)),  # colour to grey: a conversion
        ((256, 1600), _adapter(1, mode="resize")),  # resized whole
        ((200, 1600), _adapter(1)),  # reflect-padded
    ],
)
def test_row_for_declines_what_needs_more_than_a_view(
    strip_shape: tuple[int, ...], adapter: InputAdapter
) -> None:
    strip = np.zeros(strip_shape, np.uint8)
    windows = adapter.windows(*strip_shape[:2])
    assert adapter.row_for(strip, windows) is None
