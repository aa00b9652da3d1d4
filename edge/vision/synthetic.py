"""Synthetic steel strips with exact per-class ground truth, for demos, tests and tuning.

A strip is mid-gray rolled steel: fine rolling streaks, grain, mottling, bright specks, a
lighting gradient and sensor noise. Defects are drawn on top in the Severstal classes' typical
shapes:

1. pits: clusters of small dark dots a few px across
2. scratches: thin long lines along the rolling direction, bright or dark
3. scale: large irregular patches with rough, brighter or darker texture
4. holes: large dark blobs

Orientation follows the real Severstal frames (256 x 1600): the strip travels along the image's
height, so rolling streaks and scratches run vertically (along y) and the 1600 px span the
strip's width.

Ground truth is exact: ``masks[k-1]`` holds exactly the pixels class k changed, each by at least
``MATERIAL_CHANGE`` gray levels; every other pixel equals the clean strip. The clean texture is
drawn from the generator before any defect, so the same generator state with
``defect_classes=()`` yields the defect-free version of the same strip.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np

CLASS_IDS = (1, 2, 3, 4)
CLASS_NAMES = ("pits", "scratches", "scale", "holes")
# A defect pixel differs from the clean strip by at least this much; the sensor noise sigma is
# 2.5-4.5, so this is a change a person would see, not noise.
MATERIAL_CHANGE = 12
# Real Severstal frequencies (images per class: ~900, ~250, ~5150, ~800) are softened so the
# rare classes still show up in a short demo; scale stays the most common.
STREAM_CLASS_WEIGHTS = (0.2, 0.15, 0.45, 0.2)
# Large classes are drawn first so small ones (pits, scratches) end up on top when a user
# squeezes all four into a narrow strip.
_DRAW_ORDER = (3, 4, 2, 1)
_MARGIN = MATERIAL_CHANGE + 3
_MAX_ATTEMPTS = 20


@dataclass(frozen=True)
class SyntheticStrip:
    image: np.ndarray  # uint8, H x W (grayscale)
    masks: np.ndarray  # bool, 4 x H x W; masks[k-1] is class k's exact ground truth
    classes: tuple[int, ...]  # class ids (1..4) present, sorted


def generate_strip(
    rng: np.random.Generator,
    *,
    height: int = 256,
    width: int = 1600,
    defect_classes: Sequence[int] = (),
) -> SyntheticStrip:
    """One strip with exactly ``defect_classes`` drawn (one or more instances each)."""
    classes = tuple(sorted(set(defect_classes)))
    if any(c not in CLASS_IDS for c in classes):
        raise ValueError(f"defect classes must be in {CLASS_IDS}, got {tuple(defect_classes)}")
    if height < 32 or width < 32:
        raise ValueError(f"strip must be at least 32 x 32, got {height} x {width}")
    clean = _clean_texture(rng, height, width)
    clean_q = _quantize(clean)
    masks = np.zeros((len(CLASS_IDS), height, width), dtype=bool)
    if not classes:
        return SyntheticStrip(image=clean_q, masks=masks, classes=())
    image = clean.copy()
    # Each class owns a band of columns so classes don't overlap (unless the strip is too
    # narrow for their shapes); instances of one class may overlap each other.
    slot_w = width // len(classes)
    slot_of = {c: int(s) for c, s in zip(classes, rng.permutation(len(classes)), strict=True)}
    for cls in (c for c in _DRAW_ORDER if c in slot_of):
        x_lo = slot_of[cls] * slot_w
        # A pit cluster near the top or bottom edge can fall entirely off the strip: draw again
        # (nothing was painted) so every requested class is present.
        for _ in range(_MAX_ATTEMPTS):
            _DRAWERS[cls](rng, image, masks[cls - 1], x_lo, x_lo + slot_w)
            if masks[cls - 1].any():
                break
    drawn = masks.any(axis=0)
    old, new = clean_q[drawn], _quantize(image[drawn])
    # Clipping and rounding can shrink a change below the threshold; such pixels revert to the
    # clean value so that "in a mask" and "changed materially" are the same thing.
    changed = np.abs(new.astype(np.int16) - old.astype(np.int16)) >= MATERIAL_CHANGE
    image_q = clean_q.copy()
    image_q[drawn] = np.where(changed, new, old)
    unchanged = drawn.copy()
    unchanged[drawn] = ~changed
    masks &= ~unchanged
    present = tuple(c for c in CLASS_IDS if masks[c - 1].any())
    return SyntheticStrip(image=image_q, masks=masks, classes=present)


def strip_stream(
    seed: int = 0, *, defect_rate: float = 0.2, height: int = 256, width: int = 1600
) -> Iterator[SyntheticStrip]:
    """Endless strips; each is defective with probability ``defect_rate`` (1-2 classes)."""
    if not 0.0 <= defect_rate <= 1.0:
        raise ValueError(f"defect_rate must be in [0, 1], got {defect_rate}")
    rng = np.random.default_rng(seed)
    while True:
        classes: tuple[int, ...] = ()
        if rng.random() < defect_rate:
            count = int(rng.integers(1, 3))
            picked = rng.choice(CLASS_IDS, size=count, replace=False, p=STREAM_CLASS_WEIGHTS)
            classes = tuple(int(c) for c in picked)
        yield generate_strip(rng, height=height, width=width, defect_classes=classes)


def _quantize(image: np.ndarray) -> np.ndarray:
    # cv2 saturates and rounds half to even like np.rint, at a fraction of numpy's cost; its
    # abs() only matters below 0, which the clamp rules out.
    return cv2.convertScaleAbs(np.maximum(image, 0.0)).reshape(image.shape)


def _clamp(value: int, lo: int, hi: int) -> int:
    """``value`` within [lo, hi]; lo wins when the range is empty (a slot narrower than a shape)."""
    return max(lo, min(value, hi))


def _smooth_noise(
    rng: np.random.Generator, rows: int, cols: int, height: int, width: int, cubic: bool = False
) -> np.ndarray:
    """Unit-ish noise correlated over height/rows x width/cols px, by upsampling a small grid."""
    small = rng.standard_normal((max(rows, 2), max(cols, 2)), dtype=np.float32)
    interp = cv2.INTER_CUBIC if cubic else cv2.INTER_LINEAR
    return cv2.resize(small, (width, height), interpolation=interp)


def _clean_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    level = rng.uniform(95.0, 135.0)
    gx = np.linspace(-1.0, 1.0, width, dtype=np.float32)
    gy = np.linspace(-1.0, 1.0, height, dtype=np.float32)
    across = rng.uniform(-12, 12) * gx + rng.uniform(-10, 10) * (gx * gx - 1 / 3)
    along = rng.uniform(-5, 5) * gy
    image = (level + along[:, None] + across[None, :]).astype(np.float32)
    scratch = np.empty_like(image)
    for layer, (low, high) in enumerate(_LAYER_AMPLITUDES):
        bank = _texture_bank(layer, height, width)
        y0 = int(rng.integers(0, bank.shape[0] - height + 1))
        x0 = int(rng.integers(0, bank.shape[1] - width + 1))
        window = bank[y0 : y0 + height, x0 : x0 + width]
        image += np.multiply(window, np.float32(rng.uniform(low, high)), out=scratch)
    # Sparse bright specks (dust, reflections) are part of clean steel in the real frames.
    count = int(rng.binomial(height * width, rng.uniform(5e-4, 4e-3)))
    specks = rng.integers(0, height * width, size=count)
    image.reshape(-1)[specks] += np.float32(rng.uniform(20.0, 60.0))
    return image


# Texture layers of the clean strip, each unit noise times an amplitude drawn per strip. Drawn
# fresh, the noise would cost most of a strip's time budget; instead every strip takes its own
# window at a random offset into a fixed, larger bank per layer (windows of independent layers
# at independent offsets: strips don't repeat).
_LAYER_AMPLITUDES = (
    (3.0, 6.0),  # rolling streaks, 1-3 px wide and tens of px long (few rows, a column per px)
    (2.0, 4.0),  # full-height rolling streaks
    (3.0, 7.0),  # mottling: blotches elongated along the rolling direction
    (3.0, 9.0),  # grain: the isotropic 2-3 px speckle of the real surface
    (2.5, 4.5),  # sensor noise
)


@functools.lru_cache(maxsize=8)
def _texture_bank(layer: int, height: int, width: int) -> np.ndarray:
    rng = np.random.default_rng((0x5EED, layer))
    bank_h, bank_w = height + height // 2, width + width // 2
    grids = [
        (max(height // 24, 2) * 3 // 2, bank_w, False),
        (5, bank_w // 2, False),
        (height // 48 * 3 // 2 + 3, width // 16 * 3 // 2 + 3, True),
        (bank_h // 2, bank_w // 2, False),
    ]
    if layer == len(grids):
        bank = rng.standard_normal((bank_h, bank_w), dtype=np.float32)
    else:
        rows, cols, cubic = grids[layer]
        bank = _smooth_noise(rng, rows, cols, bank_h, bank_w, cubic)
    bank.flags.writeable = False
    return bank


def _window(
    shape: tuple[int, ...], y0: int, x0: int, h: int, w: int
) -> tuple[slice, slice, slice, slice] | None:
    """Image and crop slices of an h x w box at (y0, x0), clipped to the image."""
    iy0, ix0 = max(y0, 0), max(x0, 0)
    iy1, ix1 = min(y0 + h, shape[0]), min(x0 + w, shape[1])
    if iy0 >= iy1 or ix0 >= ix1:
        return None
    return (
        slice(iy0, iy1),
        slice(ix0, ix1),
        slice(iy0 - y0, iy1 - y0),
        slice(ix0 - x0, ix1 - x0),
    )


def _paste(
    image: np.ndarray, region: np.ndarray, y0: int, x0: int, delta: np.ndarray, inside: np.ndarray
) -> None:
    """Add ``delta`` where ``inside`` holds, in the box at (y0, x0); mark those pixels."""
    win = _window(image.shape, y0, x0, *inside.shape)
    if win is None:
        return
    iy, ix, cy, cx = win
    sel = inside[cy, cx]
    image[iy, ix][sel] += delta[cy, cx][sel]
    region[iy, ix] |= sel


def _blob(rng: np.random.Generator, h: int, w: int, roughness: float) -> np.ndarray:
    """An irregular filled shape in an h x w box; its centre is always inside."""
    yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
    xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
    wobble = np.clip(_smooth_noise(rng, 5, 5, h, w, cubic=True), -1.0, 1.0)
    fine = np.clip(_smooth_noise(rng, max(h // 6, 2), max(w // 6, 2), h, w), -1.0, 1.0)
    # roughness <= 0.55 keeps the centre's field above the cut, so the blob is never empty.
    field = 1.0 - (yy * yy + xx * xx) + roughness * (0.75 * wobble + 0.25 * fine)
    return field > 0.4


def _signed_at_least(delta: np.ndarray, sign: float) -> np.ndarray:
    return sign * np.maximum(np.abs(delta), _MARGIN).astype(np.float32)


def _draw_pits(
    rng: np.random.Generator, image: np.ndarray, region: np.ndarray, x_lo: int, x_hi: int
) -> None:
    height = image.shape[0]
    for _ in range(int(rng.integers(1, 4))):
        radius = int(rng.integers(8, 31))
        size = 2 * radius + 8
        cy = int(rng.integers(0, height))
        cx = _clamp(
            int(rng.integers(x_lo, max(x_hi, x_lo + 1))), x_lo + size // 2, x_hi - size // 2
        )
        depth = np.zeros((size, size), dtype=np.float32)
        # Dots per cluster grow with its area so small clusters stay sparse, not a dark smudge.
        for _ in range(int(rng.integers(3, 4 + radius * radius // 40))):
            r, a = radius * np.sqrt(rng.random()), rng.uniform(0, 2 * np.pi)
            center = (int(size / 2 + r * np.cos(a)), int(size / 2 + r * np.sin(a)))
            dot = int(rng.choice((1, 1, 2, 2, 3)))
            cv2.circle(depth, center, dot, float(rng.uniform(25, 60)), thickness=-1)
        inside = depth > 0
        _paste(image, region, cy - size // 2, cx - size // 2, -depth, inside)


def _draw_scratches(
    rng: np.random.Generator, image: np.ndarray, region: np.ndarray, x_lo: int, x_hi: int
) -> None:
    height = image.shape[0]
    x_base = int(rng.integers(x_lo, max(x_hi, x_lo + 1)))
    sign = float(rng.choice((-1.0, 1.0)))
    for _ in range(int(rng.integers(1, 4))):
        length = int(rng.integers(min(60, height), height + 1))
        y_start = int(rng.integers(-length // 4, height - length // 2))
        slope = rng.uniform(-0.08, 0.08)
        ys = np.linspace(0, length, 9)
        xs = slope * ys + rng.uniform(-1.0, 1.0, size=ys.size)
        pad = int(np.ceil(np.abs(xs).max())) + 4
        cols = 2 * pad + 1
        x0 = _clamp(x_base + int(rng.integers(-30, 31)) - pad, x_lo, x_hi - cols)
        pts = np.stack([xs + pad, ys], axis=1).round().astype(np.int32)
        strength = np.zeros((length + 1, cols), dtype=np.float32)
        cv2.polylines(strength, [pts], False, float(rng.uniform(40, 70)), int(rng.integers(1, 4)))
        inside = strength > 0
        _paste(image, region, y_start, x0, _signed_at_least(strength, sign), inside)


def _draw_scale(
    rng: np.random.Generator, image: np.ndarray, region: np.ndarray, x_lo: int, x_hi: int
) -> None:
    height = image.shape[0]
    slot = x_hi - x_lo
    # One polarity per strip, and where patches overlap the stronger one wins: added up, two
    # dark patches would be as dark as a hole.
    sign = 1.0 if rng.random() < 0.65 else -1.0
    strength = np.zeros((height, slot), dtype=np.float32)
    for _ in range(int(rng.integers(1, 3))):
        h = int(rng.integers(min(60, height // 2), max(min(220, height), 61)))
        w = int(rng.integers(max(min(80, slot // 2), 16), max(min(320, slot), 17)))
        inside = _blob(rng, h, w, roughness=rng.uniform(0.35, 0.55))
        # Scale is rough: flakes (bright/dark specks a few px wide) and streaks stretched along
        # the rolling direction on top of a brightness shift.
        rough = np.abs(_smooth_noise(rng, h // 2, w // 2, h, w)) * rng.uniform(12, 30)
        rough += np.abs(_smooth_noise(rng, h // 6, w // 6, h, w)) * rng.uniform(8, 20)
        rough += np.abs(_smooth_noise(rng, max(h // 16, 2), w, h, w)) * rng.uniform(5, 15)
        if sign < 0:
            # Dark scale keeps its roughness but not its extra darkness, or it would be as dark
            # as a hole.
            rough -= 0.75 * rough.mean()
        patch = np.where(inside, np.maximum(rng.uniform(_MARGIN, 35) + rough, _MARGIN), 0)
        y0 = int(rng.integers(-h // 4, height - 3 * h // 4))
        win = _window(strength.shape, y0, int(rng.integers(0, max(slot - w, 1))), h, w)
        if win is not None:
            iy, ix, cy, cx = win
            np.maximum(strength[iy, ix], patch[cy, cx], out=strength[iy, ix])
    _paste(image, region, 0, x_lo, (sign * strength).astype(np.float32), strength > 0)


def _draw_holes(
    rng: np.random.Generator, image: np.ndarray, region: np.ndarray, x_lo: int, x_hi: int
) -> None:
    height = image.shape[0]
    slot = x_hi - x_lo
    for _ in range(int(rng.integers(1, 3))):
        h = int(rng.integers(min(24, height // 2), max(min(120, height // 2), 25)))
        w = int(rng.integers(max(min(24, slot // 2), 8), max(min(140, slot), 9)))
        inside = _blob(rng, h, w, roughness=rng.uniform(0.15, 0.35))
        yy = np.linspace(-1.0, 1.0, h, dtype=np.float32)[:, None]
        xx = np.linspace(-1.0, 1.0, w, dtype=np.float32)[None, :]
        # Darkest in the core, a little lighter towards the rim, with a faint texture.
        level = rng.uniform(15, 45) + 15 * np.clip(yy * yy + xx * xx, 0, 1)
        level = level + 3 * rng.standard_normal((h, w), dtype=np.float32)
        y0 = int(rng.integers(-h // 4, height - 3 * h // 4))
        x0 = int(rng.integers(x_lo, max(x_hi - w, x_lo + 1)))
        win = _window(image.shape, y0, x0, h, w)
        if win is None:
            continue
        iy, ix, cy, cx = win
        # Set to the hole's level, but always at least _MARGIN darker than what was there.
        old = image[iy, ix]
        delta = np.zeros((h, w), dtype=np.float32)
        delta[cy, cx] = np.minimum(level[cy, cx] - old, -_MARGIN)
        _paste(image, region, y0, x0, delta, inside)


_DRAWERS = {1: _draw_pits, 2: _draw_scratches, 3: _draw_scale, 4: _draw_holes}
