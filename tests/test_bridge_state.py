"""The bridges' state machine, fed by hand-built events on a fake clock (no sockets)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge.daemon.config import ConfigError
from edge.line.bridges.config import load_bridge_config
from edge.line.bridges.state import BridgeState, class_mask
from edge.line.bridges.subscriber import Subscriber
from edge.protocol import pack


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def result(camera: str, seq: int, *defects: tuple[int, int, int, int]) -> dict[str, Any]:
    """defects: (class_id, area_px, bbox_x, bbox_w) each, one component per class."""
    return {
        "v": 1,
        "kind": "result",
        "camera": camera,
        "seq": seq,
        "ts_ns": 5,
        "shape": [256, 1600],
        "defective": bool(defects),
        "defects": [
            {
                "class_id": c,
                "name": f"c{c}",
                "area_px": area + 7,  # the mask may hold smaller components too
                "mask_rle": "",
                "components": [{"bbox": [x, 10, w, 20], "area_px": area}],
            }
            for c, area, x, w in defects
        ],
    }


STATUS = {"v": 1, "kind": "status", "daemon": "line2", "uptime_s": 1.0, "cameras": {}}


def make(**kwargs: Any) -> tuple[BridgeState, Clock]:
    clock = Clock()
    return BridgeState(clock=clock, **kwargs), clock


def test_class_mask_sets_bit_k_minus_1_and_skips_what_does_not_fit() -> None:
    assert class_mask([1, 3]) == 0b101
    assert class_mask([4, 4]) == 0b1000
    assert class_mask([0, 17, 16]) == 1 << 15


def test_defective_result_latches_with_classes_counts_and_largest_defect() -> None:
    state, _ = make(cameras=["cam1"])
    assert state.apply("event/cam1", result("cam1", 1)) is None
    notice = state.apply("event/cam1", result("cam1", 2, (1, 300, 100, 40), (3, 900, 500, 60)))
    assert notice is not None and notice.class_mask == 0b101 and notice.names == ("c1", "c3")
    cam = state.snapshot().cameras[0]
    assert (cam.latched, cam.latched_mask, cam.latched_seq, cam.last_seq) == (True, 0b101, 2, 2)
    assert cam.largest is not None
    assert (cam.largest.area_px, cam.largest.class_id, cam.largest.x_px) == (900, 3, 530)
    assert (cam.largest.width_px, cam.largest.frame_width_px, cam.largest.seq) == (60, 1600, 2)
    assert (cam.frames, cam.defective_frames, cam.class_counts[:4]) == (2, 1, (1, 0, 1, 0))
    assert cam.events == 2


def test_clean_frame_keeps_the_latch_until_ack_and_later_defects_widen_it() -> None:
    state, _ = make(cameras=["cam1"])
    state.apply("event/cam1", result("cam1", 1, (2, 50, 0, 10)))
    state.apply("event/cam1", result("cam1", 2))
    cam = state.snapshot().cameras[0]
    assert cam.latched and not cam.last_defective and cam.last_mask == 0
    state.apply("event/cam1", result("cam1", 3, (4, 500, 1000, 10)))
    cam = state.snapshot().cameras[0]
    assert cam.latched_mask == 0b1010 and cam.latched_seq == 1
    assert cam.largest is not None and cam.largest.area_px == 500
    state.ack(0)
    cam = state.snapshot().cameras[0]
    assert not cam.latched and cam.latched_mask == 0 and cam.largest is None
    assert cam.latched_seq is None and cam.defective_frames == 2  # ack is not a reset


def test_hold_time_clears_the_latch_after_the_last_defect() -> None:
    state, clock = make(cameras=["cam1"], hold_s=2.0)
    state.apply("event/cam1", result("cam1", 1, (1, 50, 0, 10)))
    clock.now += 1.5
    state.apply("event/cam1", result("cam1", 2, (1, 50, 0, 10)))  # restarts the hold
    clock.now += 1.5
    assert state.snapshot().cameras[0].latched
    clock.now += 0.6
    assert not state.snapshot().cameras[0].latched


def test_no_hold_time_means_latched_forever() -> None:
    state, clock = make(cameras=["cam1"])
    state.apply("event/cam1", result("cam1", 1, (1, 50, 0, 10)))
    clock.now += 10 * 86400
    assert state.snapshot().cameras[0].latched


def test_gap_drop_reject_restart_counters_and_reset() -> None:
    state, _ = make(cameras=["cam1"])
    events = [
        {"v": 1, "kind": "gap", "camera": "cam1", "first_seq": 3, "last_seq": 5, "missing": 3},
        {"v": 1, "kind": "gap", "camera": "cam1", "first_seq": 9, "last_seq": 9, "missing": 1},
        {"v": 1, "kind": "drop", "camera": "cam1", "seq": 11, "ts_ns": 0, "reason": "overload"},
        {"v": 1, "kind": "reject", "camera": "cam1", "seq": -1, "ts_ns": None, "reason": "x"},
        {"v": 1, "kind": "camera_restart", "camera": "cam1", "previous_seq": 11, "seq": 0},
    ]
    state.apply("event/cam1", result("cam1", 1, (1, 50, 0, 10)))
    for ev in events:
        state.apply("event/cam1", ev)
    cam = state.snapshot().cameras[0]
    assert (cam.gaps, cam.missing, cam.drops, cam.rejects, cam.restarts) == (2, 4, 1, 1, 1)
    assert cam.last_seq == 11  # a reject with an unreadable seq does not move it
    state.reset(0)
    cam = state.snapshot().cameras[0]
    assert (cam.gaps, cam.missing, cam.drops, cam.rejects, cam.frames) == (0, 0, 0, 0, 0)
    assert cam.class_counts == (0,) * 8 and cam.latched  # reset leaves the latch alone


def test_daemon_health_follows_status_age_and_camera_health_its_events() -> None:
    state, clock = make(cameras=["cam1"], stale_s=3.0, camera_stale_s=5.0)
    view = state.snapshot()
    assert not view.daemon_ok and view.status_age_s is None and not view.cameras[0].camera_ok
    state.apply("status/line2", STATUS)
    state.apply("event/cam1", result("cam1", 1))
    view = state.snapshot()
    assert view.daemon_ok and view.cameras[0].camera_ok and view.daemon == "line2"
    clock.now += 3.5
    view = state.snapshot()
    assert not view.daemon_ok and view.status_age_s == pytest.approx(3.5)
    assert not view.cameras[0].camera_ok  # no healthy daemon: no camera is being inspected
    state.apply("status/line2", STATUS)
    assert state.snapshot().cameras[0].camera_ok
    clock.now += 2.0
    state.apply("status/line2", STATUS)
    view = state.snapshot()
    assert view.daemon_ok and not view.cameras[0].camera_ok and view.status_count == 3


def test_fixed_slots_ignore_other_cameras() -> None:
    state, _ = make(cameras=["top", "bottom"], max_cameras=4)
    state.apply("event/side", result("side", 1, (1, 50, 0, 10)))
    state.apply("event/bottom", result("bottom", 1, (1, 50, 0, 10)))
    view = state.snapshot()
    assert [c.camera for c in view.cameras] == ["top", "bottom", "", ""]
    assert view.cameras[1].latched and not view.cameras[0].latched
    assert view.ignored_events == 1 and state.slot_of("bottom") == 1


def test_slots_follow_first_seen_order_up_to_max_and_unknown_takes_none() -> None:
    state, _ = make(max_cameras=2)
    reject = {"v": 1, "kind": "reject", "camera": "unknown", "seq": -1, "reason": "x"}
    for name in ("b", "a", "c"):
        state.apply(f"event/{name}", result(name, 1))
    state.apply("event/unknown", reject)
    view = state.snapshot()
    assert [c.camera for c in view.cameras] == ["b", "a"]
    assert view.ignored_events == 2


def test_bad_camera_lists_are_refused() -> None:
    with pytest.raises(ValueError, match="unique"):
        BridgeState(["a", "a"])
    with pytest.raises(ValueError, match="max_cameras"):
        BridgeState(["a", "b"], max_cameras=1)


def test_subscriber_counts_non_events_and_malformed_events_and_serves_on() -> None:
    state, _ = make(cameras=["cam1"])
    sub = Subscriber("tcp://127.0.0.1:1", state)  # never started: only its decoding is used
    try:
        sub.handle([b"event/cam1"])  # one part
        sub.handle([b"event/cam1", b"\xc1"])  # not msgpack
        broken = {**result("cam1", 3), "defects": [{"name": "no class_id"}]}
        sub.handle([b"event/cam1", pack(broken)])
        sub.handle([b"event/cam1", pack(result("cam1", 4, (2, 10, 0, 5)))])
    finally:
        sub.stop()
    view = state.snapshot()
    assert view.invalid_messages == 3
    assert view.cameras[0].latched and view.cameras[0].last_seq == 4
    assert view.cameras[0].frames == 1  # the broken event counted no frame


def test_config_file_flags_and_errors_name_the_key(tmp_path: Path) -> None:
    path = tmp_path / "bridge.toml"
    path.write_text(
        'source = "tcp://daemon:5556"\ncameras = ["top", "bottom"]\nhold_s = 2.5\n'
        'listen = "0.0.0.0:502"\n'
    )
    cfg = load_bridge_config(path, hold_s=1.0)
    assert cfg.cameras == ["top", "bottom"] and cfg.hold_s == 1.0
    assert cfg.host_port == ("0.0.0.0", 502) and cfg.source == "tcp://daemon:5556"
    assert load_bridge_config().host_port == ("127.0.0.1", 5020)  # localhost by default
    path.write_text("stale_s = 0\n")
    with pytest.raises(ConfigError, match=r"bridge.toml: stale_s: .*greater than 0"):
        load_bridge_config(path)
    with pytest.raises(ConfigError, match="listen: 'nope' is not host:port"):
        load_bridge_config(None, listen="nope")
    with pytest.raises(ConfigError, match="endpoint: 'http://x' is not an OPC UA URL"):
        load_bridge_config(None, endpoint="http://x")
    with pytest.raises(ConfigError, match="colour"):
        load_bridge_config(None, colour="red")
    with pytest.raises(ConfigError, match="does not exist"):
        load_bridge_config(tmp_path / "missing.toml")


def status(counted: dict[str, int], uptime: float, daemon: str = "d1") -> dict[str, Any]:
    cameras = {
        c: {"received": n, "results": n, "rejects": 0, "drops": 0} for c, n in counted.items()
    }
    return {"v": 1, "kind": "status", "daemon": daemon, "uptime_s": uptime, "cameras": cameras}


def lost(state: BridgeState, camera: str = "cam1") -> int:
    (view,) = [c for c in state.snapshot().cameras if c.camera == camera]
    return view.events_lost


def test_events_the_daemon_published_but_never_arrived_are_counted_as_lost() -> None:
    state = BridgeState(["cam1"], max_cameras=1)
    state.apply("status/d1", status({"cam1": 5}, 10.0))  # the anchor: 5 frames before we joined
    for seq in range(5, 15):
        if seq not in (8, 9, 11):  # three results lost on the way to the bridge
            state.apply("event/cam1", result("cam1", seq))
    for uptime in (11.0, 12.0, 13.0):
        state.apply("status/d1", status({"cam1": 15}, uptime))
        assert lost(state) == 0  # not yet: events counted by then may still be on their way
    state.apply("status/d1", status({"cam1": 15}, 14.0))
    assert lost(state) == 3
    view = state.snapshot().cameras[0]
    assert view.frames == 7
    state.reset(0)
    assert lost(state) == 0  # a reset zeroes it, like every counter


def test_late_events_and_daemon_restarts_are_not_losses() -> None:
    state = BridgeState(["cam1"], max_cameras=1)
    state.apply("status/d1", status({"cam1": 0}, 1.0))
    state.apply("status/d1", status({"cam1": 4}, 2.0))
    for uptime in (3.0, 4.0):
        state.apply("status/d1", status({"cam1": 4}, uptime))
    for seq in range(4):  # arrive late, but before the check reaches them
        state.apply("event/cam1", result("cam1", seq))
    for uptime in (5.0, 6.0, 7.0):
        state.apply("status/d1", status({"cam1": 4}, uptime))
    assert lost(state) == 0
    # The daemon restarts: its counters begin again, a new anchor is taken, nothing is lost.
    for uptime in (0.5, 1.5, 2.5, 3.5, 4.5):
        state.apply("status/d1", status({"cam1": 0}, uptime))
    assert lost(state) == 0
