"""Training crops drawn from labelled strips, with the labels that go with them.

Crops are square so flips and 90-degree turns (the augmentation) keep their shape. Half the
crops are centred on a defect pixel, because defects cover a few percent of a strip and a
uniform crop would almost never show the rare classes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edge.tools.training.labels import NUM_CLASSES, LabelledStrip
from edge.vision.synthetic import CLASS_IDS, STREAM_CLASS_WEIGHTS, generate_strip

# A crop is labelled "class k present" from this many of its pixels; fewer (a defect's edge
# clipped by the crop) is too little to call either way, so such labels carry no loss.
PRESENT_PIXELS = 24


@dataclass(frozen=True)
class Batch:
    images: np.ndarray  # float32, N x 1 x S x S, pixels / 255
    masks: np.ndarray  # float32, N x 4 x S x S
    labels: np.ndarray  # float32, N x 4: class present in the crop
    weights: np.ndarray  # float32, N x 4: 0 where a label is unknown or ambiguous


def synthetic_strips(count: int, seed: int, clean_fraction: float = 0.3) -> list[LabelledStrip]:
    """``count`` generated strips: some clean, the rest with 1-2 classes (exact masks)."""
    rng = np.random.default_rng(seed)
    strips = []
    for n in range(count):
        classes: tuple[int, ...] = ()
        if rng.random() >= clean_fraction:
            k = int(rng.integers(1, 3))
            classes = tuple(
                int(c) for c in rng.choice(CLASS_IDS, size=k, replace=False, p=STREAM_CLASS_WEIGHTS)
            )
        strip = generate_strip(rng, defect_classes=classes)
        present = strip.masks.reshape(NUM_CLASSES, -1).any(axis=1)
        strips.append(
            LabelledStrip(
                f"synthetic-{seed}-{n}",
                strip.image,
                strip.masks,
                present,
                np.ones(NUM_CLASSES, bool),
            )
        )
    return strips


class CropSampler:
    """Random augmented crops from a pool of strips, real ones drawn ``real_weight`` of the time."""

    def __init__(
        self,
        real: Sequence[LabelledStrip],
        synthetic: Sequence[LabelledStrip],
        *,
        size: int,
        seed: int,
        real_weight: float = 0.5,
        defect_centred: float = 0.5,
        need_masks: bool = False,
        photometric: bool = True,
        class_balanced: bool = False,
        turns: bool = True,
    ) -> None:
        if need_masks:
            # A segmenter learns nothing true from a class whose mask is unknown.
            real = [s for s in real if s.fully_masked]
        self.pools = [list(p) for p in (real, synthetic) if p]
        if not self.pools:
            raise ValueError("no training strips: give labelled images or --synthetic N")
        self.pool_weights = np.array(
            [real_weight, 1 - real_weight] if len(self.pools) == 2 else [1.0]
        )
        self.size = size
        self.defect_centred = defect_centred
        self.photometric = photometric
        self.class_balanced = class_balanced
        # Quarter turns make a vertical scratch horizontal, which a strip never shows (they run
        # along the rolling direction); without them the augmentation is the four flips.
        self.turn_steps = 1 if turns else 2
        # Per pool and class: the strips whose mask of that class is known. A defect-centred
        # crop then picks its class first, so a class on 17 strips is seen as often as one on 60.
        self.holders = [
            [[j for j, st in enumerate(pool) if st.present[k] and st.mask_known[k]]
             for k in range(NUM_CLASSES)]
            for pool in self.pools
        ]  # fmt: skip
        self.rng = np.random.default_rng(seed)
        for pool in self.pools:
            for strip in pool:
                h, w = strip.image.shape
                if h < size or w < size:
                    raise ValueError(f"{strip.image_id} is {h}x{w}, smaller than {size}px crops")

    def state(self) -> dict:
        return self.rng.bit_generator.state

    def restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state

    def batch(self, n: int) -> Batch:
        s = self.size
        images = np.empty((n, 1, s, s), np.float32)
        masks = np.empty((n, NUM_CLASSES, s, s), np.float32)
        labels = np.empty((n, NUM_CLASSES), np.float32)
        weights = np.empty((n, NUM_CLASSES), np.float32)
        for i in range(n):
            p = int(self.rng.choice(len(self.pools), p=self.pool_weights))
            strip, (y, x) = self._draw(p)
            crop = strip.image[y : y + s, x : x + s]
            crop_masks = strip.masks[:, y : y + s, x : x + s]
            turns = int(self.rng.integers(4 // self.turn_steps)) * self.turn_steps
            flip = bool(self.rng.integers(2))
            images[i, 0] = augment(crop, turns, flip) / np.float32(255)
            if self.photometric:
                jitter_photometric(images[i, 0], self.rng)
            masks[i] = augment(crop_masks, turns, flip)
            labels[i], weights[i] = crop_labels(crop_masks, strip)
        return Batch(images, masks, labels, weights)

    def _draw(self, p: int) -> tuple[LabelledStrip, tuple[int, int]]:
        """A strip of pool ``p`` and its crop's corner. Class-balanced: a defect-centred crop
        picks a class uniformly among those the pool has masks of, then a strip with it."""
        pool = self.pools[p]
        classes = [k for k in range(NUM_CLASSES) if self.holders[p][k]]
        if self.class_balanced and classes and self.rng.random() < self.defect_centred:
            k = classes[int(self.rng.integers(len(classes)))]
            holders = self.holders[p][k]
            strip = pool[holders[int(self.rng.integers(len(holders)))]]
            return strip, self._centred(strip, k)
        strip = pool[int(self.rng.integers(len(pool)))]
        if self.class_balanced:
            h, w = strip.image.shape
            return strip, (int(self.rng.integers(h - self.size + 1)),
                           int(self.rng.integers(w - self.size + 1)))  # fmt: skip
        return strip, self._corner(strip)

    def _centred(self, strip: LabelledStrip, k: int) -> tuple[int, int]:
        """A corner that puts a random pixel of class ``k``'s mask at the crop's centre."""
        h, w = strip.image.shape
        s = self.size
        ys, xs = np.nonzero(strip.masks[k])
        j = int(self.rng.integers(len(ys)))
        return (
            int(np.clip(int(ys[j]) - s // 2, 0, h - s)),
            int(np.clip(int(xs[j]) - s // 2, 0, w - s)),
        )

    def _corner(self, strip: LabelledStrip) -> tuple[int, int]:
        h, w = strip.image.shape
        s = self.size
        known = [k for k in range(NUM_CLASSES) if strip.present[k] and strip.mask_known[k]]
        if known and self.rng.random() < self.defect_centred:
            return self._centred(strip, known[int(self.rng.integers(len(known)))])
        return int(self.rng.integers(h - s + 1)), int(self.rng.integers(w - s + 1))


def crop_labels(crop_masks: np.ndarray, strip: LabelledStrip) -> tuple[np.ndarray, np.ndarray]:
    """Per class: present in the crop, and how much that label counts (0 = unknown)."""
    pixels = crop_masks.reshape(NUM_CLASSES, -1).sum(axis=1)
    labels = (pixels >= PRESENT_PIXELS).astype(np.float32)
    ambiguous = (pixels > 0) & (pixels < PRESENT_PIXELS)
    # A class the strip holds without a mask could be anywhere: its crop label is unknown.
    unknown = strip.present & ~strip.mask_known
    weights = (~(ambiguous | unknown)).astype(np.float32)
    return labels, weights


def jitter_photometric(image: np.ndarray, rng: np.random.Generator) -> None:
    """Vary contrast, brightness, gamma and sensor noise in place (pixels in 0..1).

    Lines differ in lighting and camera gain, and a handful of labelled strips show only a few
    of those conditions; without this a model learns the training strips' exposure.
    """
    mean = float(image.mean())
    image -= mean
    image *= rng.uniform(0.7, 1.3)
    image += mean + rng.uniform(-0.12, 0.12)
    np.clip(image, 0.0, 1.0, out=image)
    np.power(image, np.float32(np.exp(rng.uniform(-0.3, 0.3))), out=image)
    sigma = rng.uniform(0.0, 0.03)
    if sigma > 0.005:
        image += rng.normal(0.0, sigma, image.shape).astype(np.float32)
        np.clip(image, 0.0, 1.0, out=image)


def augment(array: np.ndarray, turns: int, flip: bool) -> np.ndarray:
    """Turn the last two axes by ``turns`` x 90 degrees, then mirror them left-right."""
    out = np.rot90(array, turns, axes=(-2, -1))
    return out[..., ::-1] if flip else out
