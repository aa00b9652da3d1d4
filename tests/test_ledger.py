from __future__ import annotations

from edge.daemon.ledger import Ledger


def test_gap_restart_and_counts() -> None:
    ledger = Ledger()
    events = [e for seq in [0, 1, 4, 5, 0, 1, 1] for e in ledger.observe_seq("cam1", seq)]
    assert [(e["kind"], e.get("first_seq"), e.get("last_seq")) for e in events] == [
        (
            "gap",
            2,
            3,
        ),
        ("camera_restart", None, None),
        ("camera_restart", None, None),
    ]
    assert events[1]["previous_seq"] == 5 and events[1]["seq"] == 0
    counts = ledger.snapshot()["cam1"]
    assert (counts["gaps"], counts["missing"], counts["restarts"]) == (1, 2, 2)


def test_cameras_are_tracked_apart() -> None:
    ledger = Ledger()
    assert ledger.observe_seq("a", 10) == []  # the first frame seen starts the count
    assert ledger.observe_seq("b", 0) == []
    assert ledger.observe_seq("a", 11) == []
    assert ledger.observe_seq("b", 2)[0]["missing"] == 1
    ledger.count("a", "received", 3)
    assert ledger.snapshot()["a"]["received"] == 3 and ledger.snapshot()["b"]["received"] == 0
