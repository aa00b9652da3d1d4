"""edge.synthetic: deterministic strips whose masks are exactly the pixels each defect changed."""

from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest

from edge.vision.synthetic import MATERIAL_CHANGE, SyntheticStrip, generate_strip, strip_stream

ALL_COMBOS = [c for r in range(5) for c in itertools.combinations((1, 2, 3, 4), r)]


def _strip(seed: int, classes: tuple[int, ...] = (), **size: int) -> SyntheticStrip:
    return generate_strip(np.random.default_rng(seed), defect_classes=classes, **size)


def test_image_and_masks_have_the_documented_types() -> None:
    strip = _strip(0, (3,))
    assert strip.image.dtype == np.uint8 and strip.image.shape == (256, 1600)
    assert strip.masks.dtype == np.bool_ and strip.masks.shape == (4, 256, 1600)
    assert strip.classes == (3,)
    small = _strip(0, (1, 2), height=64, width=200)
    assert small.image.shape == (64, 200) and small.masks.shape == (4, 64, 200)


def test_same_seed_gives_the_same_strip_and_other_seeds_do_not() -> None:
    a, b = _strip(7, (1, 4)), _strip(7, (1, 4))
    assert np.array_equal(a.image, b.image) and np.array_equal(a.masks, b.masks)
    assert a.classes == b.classes
    assert not np.array_equal(a.image, _strip(8, (1, 4)).image)


def test_stream_is_deterministic_for_a_seed() -> None:
    first = [s.image for s in itertools.islice(strip_stream(3, defect_rate=0.5), 6)]
    again = [s.image for s in itertools.islice(strip_stream(3, defect_rate=0.5), 6)]
    other = [s.image for s in itertools.islice(strip_stream(4, defect_rate=0.5), 6)]
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


@pytest.mark.parametrize("classes", ALL_COMBOS, ids=lambda c: "+".join(map(str, c)) or "clean")
def test_masks_are_non_empty_exactly_for_the_requested_classes(classes: tuple[int, ...]) -> None:
    for seed in range(3):
        strip = _strip(seed, classes)
        present = tuple(k + 1 for k in range(4) if strip.masks[k].any())
        assert present == classes
        assert strip.classes == classes


def test_masks_are_exactly_the_pixels_changed_from_the_clean_strip() -> None:
    # The clean texture is drawn first, so the same generator state with no classes yields
    # the defect-free version of the same strip.
    for seed, classes in enumerate(ALL_COMBOS[1:]):
        strip, clean = _strip(seed, classes), _strip(seed)
        diff = np.abs(strip.image.astype(np.int16) - clean.image.astype(np.int16))
        drawn = strip.masks.any(axis=0)
        assert np.array_equal(drawn, diff > 0)
        assert diff[drawn].min() >= MATERIAL_CHANGE


def test_duplicate_classes_are_drawn_once_and_bad_ids_are_rejected() -> None:
    assert _strip(1, (2, 2, 2)).classes == (2,)
    with pytest.raises(ValueError, match="defect classes"):
        _strip(1, (5,))
    with pytest.raises(ValueError, match="defect classes"):
        _strip(1, (0,))


def test_clean_steel_is_mid_gray_and_streaked_along_the_rolling_direction() -> None:
    for seed in range(5):
        image = _strip(seed).image.astype(np.float32)
        assert 85 <= image.mean() <= 145
        assert 3 <= image.std() <= 25
        # Streaks run along y (the strip's travel), so neighbours along y differ less.
        along = np.abs(np.diff(image, axis=0)).mean()
        across = np.abs(np.diff(image, axis=1)).mean()
        assert along < 0.95 * across


def _components(mask: np.ndarray) -> np.ndarray:
    """Per connected component: area, bounding-box height and width."""
    _, _, stats, _ = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return stats[1:, [cv2.CC_STAT_AREA, cv2.CC_STAT_HEIGHT, cv2.CC_STAT_WIDTH]]


def test_each_class_has_its_morphology() -> None:
    for seed in range(4):
        pits = _components(_strip(seed, (1,)).masks[0])
        # Several dots of a few px each (touching dots may merge into a small blob).
        assert len(pits) >= 2 and np.median(pits[:, 0]) <= 30 and pits[:, 0].max() <= 150

        scratches = _components(_strip(seed, (2,)).masks[1])
        longest = scratches[np.argmax(scratches[:, 1])]
        assert longest[1] >= 40 and longest[1] >= 4 * longest[2]  # long and thin, along y

        assert _strip(seed, (3,)).masks[2].sum() >= 1500  # large patches

        strip = _strip(seed, (4,))
        hole = strip.masks[3]
        assert hole.sum() >= 300
        assert strip.image[hole].mean() < strip.image[~hole].mean() - 40  # dark


def test_stream_defect_rate_is_near_the_requested_rate() -> None:
    strips = list(itertools.islice(strip_stream(11, defect_rate=0.3, height=64, width=256), 200))
    defective = [s for s in strips if s.classes]
    # Binomial(200, 0.3) has sd ~0.032; 0.1 is a 3-sd band (and the seed is fixed).
    assert abs(len(defective) / 200 - 0.3) < 0.1
    assert all(1 <= len(s.classes) <= 2 for s in defective)
    seen = {c for s in defective for c in s.classes}
    assert seen == {1, 2, 3, 4}


def test_stream_extreme_rates() -> None:
    assert all(not s.classes for s in itertools.islice(strip_stream(0, defect_rate=0.0), 20))
    assert all(s.classes for s in itertools.islice(strip_stream(0, defect_rate=1.0), 20))
    with pytest.raises(ValueError, match="defect_rate"):
        next(strip_stream(0, defect_rate=1.5))
