"""Kaggle/Severstal RLE: 1-based, column-major, 'start length' pairs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edge.protocol import rle

SEVERSTAL_DEV = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "severstal_dev"

# The worked example in docs/protocol.md.
MASK_3X4 = np.array(
    [
        [0, 1, 1, 0],
        [1, 1, 0, 0],
        [1, 0, 0, 1],
    ],
    dtype=bool,
)


def _reference_encode(mask: np.ndarray) -> str:
    """The definition, pixel by pixel, to check the vectorised encoder against."""
    flat = mask.T.ravel()  # column-major: down each column, columns left to right
    pairs: list[int] = []
    start = None
    for i, on in enumerate(flat, start=1):
        if on and start is None:
            start = i
        elif not on and start is not None:
            pairs += [start, i - start]
            start = None
    if start is not None:
        pairs += [start, flat.size + 1 - start]
    return " ".join(map(str, pairs))


# -- hand-computed -------------------------------------------------------------------------------


def test_docs_example() -> None:
    assert rle.encode(MASK_3X4) == "2 4 7 1 12 1"
    np.testing.assert_array_equal(rle.decode("2 4 7 1 12 1", 3, 4), MASK_3X4)


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        ([], ""),
        ([(0, 0)], "1 1"),
        ([(2, 3)], "12 1"),  # bottom-right is the last pixel
        ([(0, 1)], "4 1"),  # top of the second column follows the bottom of the first
        ([(2, 0), (0, 1)], "3 2"),  # a run wraps from one column into the next
        ([(r, c) for r in range(3) for c in range(4)], "1 12"),
        ([(1, c) for c in range(4)], "2 1 5 1 8 1 11 1"),  # a row is one pixel per column
    ],
)
def test_hand_computed(cells: list[tuple[int, int]], expected: str) -> None:
    mask = np.zeros((3, 4), bool)
    for r, c in cells:
        mask[r, c] = True
    assert rle.encode(mask) == expected
    np.testing.assert_array_equal(rle.decode(expected, 3, 4), mask)


def test_encode_accepts_0_1_and_any_memory_order() -> None:
    as_int = MASK_3X4.astype(np.uint8) * 7
    assert rle.encode(as_int) == "2 4 7 1 12 1"
    assert rle.encode(np.asfortranarray(MASK_3X4)) == "2 4 7 1 12 1"
    strided = np.zeros((6, 8), bool)
    strided[::2, ::2] = MASK_3X4
    assert rle.encode(strided[::2, ::2]) == "2 4 7 1 12 1"


def test_decode_tolerates_extra_whitespace() -> None:
    np.testing.assert_array_equal(rle.decode("  2 4\n7 1  12 1 ", 3, 4), MASK_3X4)


def test_decode_empty_string_is_an_empty_mask() -> None:
    mask = rle.decode("", 3, 4)
    assert mask.shape == (3, 4) and mask.dtype == bool and not mask.any()


def test_encode_rejects_non_2d() -> None:
    with pytest.raises(ValueError, match="2-D"):
        rle.encode(np.zeros((2, 3, 1), bool))


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("1", "odd number"),
        ("1 2 3", "odd number"),
        ("a 1", "other than integers"),
        ("1 2.5", "other than integers"),
        ("1 0x2", "other than integers"),
        ("0 1", "starts must be >= 1"),
        ("-3 1", "starts must be >= 1"),
        ("1 0", "lengths >= 1"),
        ("2 -1", "lengths >= 1"),
        ("12 2", "past the end of a 3x4 mask"),
        ("13 1", "past the end"),
        ("1 2 11 5", "past the end"),
    ],
)
def test_decode_rejects_malformed(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        rle.decode(text, 3, 4)


def test_decode_rejects_huge_integer_with_value_error() -> None:
    with pytest.raises(ValueError):
        rle.decode("99999999999999999999 1", 3, 4)


# -- property-based ------------------------------------------------------------------------------

masks = hnp.arrays(
    dtype=bool,
    shape=st.tuples(st.integers(1, 24), st.integers(1, 24)),
    elements=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(masks)
def test_round_trip(mask: np.ndarray) -> None:
    text = rle.encode(mask)
    np.testing.assert_array_equal(rle.decode(text, *mask.shape), mask)


@settings(max_examples=300, deadline=None)
@given(masks)
def test_matches_definition_and_is_canonical(mask: np.ndarray) -> None:
    text = rle.encode(mask)
    assert text == _reference_encode(mask)
    values = [int(v) for v in text.split()]
    starts, lengths = values[0::2], values[1::2]
    assert all(n >= 1 for n in lengths)
    assert sum(lengths) == int(mask.sum())
    # Runs are sorted and separated by at least one clear pixel (never adjacent or overlapping).
    for (s0, n0), s1 in zip(zip(starts, lengths, strict=True), starts[1:], strict=False):
        assert s1 > s0 + n0


@settings(max_examples=100, deadline=None)
@given(
    st.integers(1, 40).flatmap(
        lambda h: st.tuples(
            st.just(h), st.integers(1, 40), st.integers(0, h - 1), st.integers(0, 39)
        )
    )
)
def test_single_pixel_number(args: tuple[int, int, int, int]) -> None:
    h, w, y, x = args
    x = x % w
    mask = np.zeros((h, w), bool)
    mask[y, x] = True
    assert rle.encode(mask) == f"{x * h + y + 1} 1"


# -- real Severstal labels -----------------------------------------------------------------------


def _label_rows() -> list[dict[str, str]]:
    labels = SEVERSTAL_DEV / "labels.csv"
    if not labels.is_file():
        pytest.skip(f"Severstal dev labels not found at {labels} (../shared/data is absent)")
    with labels.open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_real_severstal_labels_round_trip() -> None:
    rows = _label_rows()
    assert rows, "labels.csv has no rows"
    for row in rows:
        where = f"{row['ImageId']} class {row['ClassId']}"
        text = row["EncodedPixels"]
        mask = rle.decode(text, 256, 1600)
        assert mask.shape == (256, 1600), where
        assert mask.any(), f"{where}: decodes to an empty mask"
        assert rle.encode(mask) == text, f"{where}: re-encodes differently"


def test_docs_show_the_same_example() -> None:
    doc = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
    assert '`"2 4 7 1 12 1"`' in doc.read_text()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(st.integers(-3, 300), st.integers(2**62, 2**64), st.integers(-(2**70), 2**70)),
        max_size=12,
    ),
    st.integers(1, 16),
    st.integers(1, 16),
)
def test_fuzz_decode_any_integers(values: list[int], height: int, width: int) -> None:
    # Found by this test: runs near 2**63 used to wrap around and raise IndexError.
    _decode_or_value_error(" ".join(map(str, values)), height, width)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40), st.integers(1, 16), st.integers(1, 16))
def test_fuzz_decode_any_text(text: str, height: int, width: int) -> None:
    _decode_or_value_error(text, height, width)


def _decode_or_value_error(text: str, height: int, width: int) -> None:
    try:
        mask = rle.decode(text, height, width)
    except ValueError:
        return
    assert mask.shape == (height, width) and mask.dtype == bool
    assert rle.decode(rle.encode(mask), height, width).tolist() == mask.tolist()


def test_runs_that_would_overflow_64_bits_are_a_value_error() -> None:
    for text in ("2 9223372036854775807", "9223372036854775807 9223372036854775807"):
        with pytest.raises(ValueError, match="past the end"):
            rle.decode(text, 3, 4)
