"""The strips every bench mode runs on: synthetic at an exact defective share, or real images.

One pool is made up front and cycled, so generating strips never costs measured time and every
mode (and the camera process of the e2e mode) sees the very same pixels.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.line.camera import images_in, load_strip
from edge.protocol import FrameHeader, encode_frame
from edge.vision.synthetic import CLASS_IDS, STREAM_CLASS_WEIGHTS, generate_strip


@dataclass(frozen=True)
class StripPool:
    images: list[np.ndarray]  # uint8, H x W
    defective: list[bool | None]  # ground truth for synthetic strips, None for real images
    source: str  # "synthetic" or the image folder

    def __len__(self) -> int:
        return len(self.images)

    @property
    def defective_share(self) -> float | None:
        known = [d for d in self.defective if d is not None]
        return sum(known) / len(known) if known else None

    def message(self, index: int, camera: str = "cam1", seq: int | None = None) -> list[bytes]:
        """The wire message a camera would send for strip ``index`` (raw, captured now)."""
        image = self.images[index % len(self.images)]
        header = FrameHeader(
            camera=camera,
            seq=index if seq is None else seq,
            ts_ns=time.time_ns(),
            encoding="raw",
            shape=tuple(image.shape),
        )
        return [bytes(p) for p in encode_frame(header, image.tobytes())]

    def save(self, path: Path) -> Path:
        """All strips in one .npy (the e2e camera process loads it instead of regenerating)."""
        np.save(path, np.stack(self.images))
        return path


def synthetic_pool(count: int, defect_rate: float, seed: int = 0) -> StripPool:
    """``count`` strips of which exactly round(defect_rate * count) are defective, shuffled.

    Classes are picked the way ``edge.vision.synthetic.strip_stream`` picks them (1-2 per defective
    strip, stream weights), but the defective share is exact rather than a coin flip per strip,
    so a short run measures the rate it was asked for.
    """
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect rate must be in [0, 1], got {defect_rate}")
    if count < 1:
        raise ValueError(f"the strip pool needs at least 1 strip, got {count}")
    rng = np.random.default_rng(seed)
    flags = np.zeros(count, dtype=bool)
    flags[: round(defect_rate * count)] = True
    rng.shuffle(flags)
    images, defective = [], []
    for flag in flags:
        classes: tuple[int, ...] = ()
        if flag:
            picked = rng.choice(
                CLASS_IDS, size=int(rng.integers(1, 3)), replace=False, p=STREAM_CLASS_WEIGHTS
            )
            classes = tuple(int(c) for c in picked)
        strip = generate_strip(rng, defect_classes=classes)
        images.append(strip.image)
        defective.append(bool(strip.classes))
    return StripPool(images, defective, "synthetic")


def image_pool(folder: Path, limit: int) -> StripPool:
    """Up to ``limit`` images from ``folder``, as grayscale strips (ImageLoadError if unusable)."""
    paths = images_in(folder)[:limit]
    images = [load_strip(p, gray=True) for p in paths]
    return StripPool(images, [None] * len(images), str(folder))
