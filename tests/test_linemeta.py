"""The line's meta convention (edge.protocol.linemeta): reading is tolerant and names problems."""

from __future__ import annotations

import pytest

from edge.protocol.linemeta import parse_assignments, read_place, strip_meta


def test_a_well_formed_meta_is_read_and_columns_map_to_millimetres() -> None:
    place = read_place(
        {"coil_id": "C123", "position_mm": 256, "strip_length_mm": 128, "side": "top"}
    )
    assert (place.coil_id, place.position_mm, place.side, place.problems) == (
        "C123",
        256.0,
        "top",
        (),
    )
    assert place.column_mm(800, 1600) == 320.0


@pytest.mark.parametrize(
    ("meta", "problem"),
    [
        ({"coil_id": 5}, "meta 'coil_id' must be a non-empty string, got 5"),
        ({"position_mm": -1}, "meta 'position_mm' must be a number >= 0, got -1"),
        ({"strip_length_mm": 0}, "meta 'strip_length_mm' must be a number > 0, got 0"),
        ({"position_mm": True}, "meta 'position_mm' must be a number >= 0, got True"),
        ({"side": "left"}, "meta 'side' must be one of ['top', 'bottom'], got 'left'"),
        ([], "meta must be a map, got list"),
    ],
)
def test_an_unusable_key_is_named_and_left_out(meta: object, problem: str) -> None:
    place = read_place(meta)
    assert place.problems == (problem,)
    assert place.column_mm(0, 1600) is None


def test_positions_advance_per_strip_and_assignments_stay_strings() -> None:
    base = parse_assignments(["coil_id=00123", "side=bottom"])
    assert base == {"coil_id": "00123", "side": "bottom"}
    meta = strip_meta(base, 3, strip_length_mm=128, start_mm=10, file="a.jpg")
    assert meta == {**base, "position_mm": 394.0, "strip_length_mm": 128, "file": "a.jpg"}
    with pytest.raises(ValueError, match="key=value"):
        parse_assignments(["coil_id"])
    with pytest.raises(ValueError, match="--strip-length-mm"):
        parse_assignments(["position_mm=3"])
    with pytest.raises(ValueError, match="side must be one of"):
        parse_assignments(["side=left"])
