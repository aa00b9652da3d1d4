"""The line meta that `edge camera` and `edge replay` stamp on frames, read by a real SUB socket."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import zmq
from typer.testing import CliRunner

from edge.cli.main import app
from edge.line.recording import RecordingWriter
from edge.line.stamping import MetaStamp, stamp_frame_parts
from edge.protocol import FrameHeader, encode_frame, pack, parse_frame_parts
from edge.protocol.linemeta import read_place
from tests.test_camera import free_endpoint, make_sub, recv_n

__all__ = ["make_sub"]  # the fixture, imported for these tests

EDGE = [sys.executable, "-m", "edge.cli.main"]
STRIP = np.arange(16 * 24, dtype=np.uint8).reshape(16, 24)


def frame(camera: str, seq: int, meta: dict | None = None) -> list[bytes]:
    header = FrameHeader(
        camera=camera, seq=seq, ts_ns=1, encoding="raw", shape=STRIP.shape, meta=meta or {}
    )
    return [bytes(p) for p in encode_frame(header, STRIP.tobytes())]


# -- MetaStamp ---------------------------------------------------------------------------------


def test_positions_advance_per_camera_and_recorded_keys_are_kept_unless_overridden() -> None:
    stamp = MetaStamp({"coil_id": "C7"}, strip_length_mm=128.0, start_mm=1000.0)
    a0 = stamp.next_meta("a", {"coil_id": "old", "lot": "L1"})
    a1 = stamp.next_meta("a")
    b0 = stamp.next_meta("b", file="s.png")
    assert a0 == {"coil_id": "C7", "lot": "L1", "position_mm": 1000.0, "strip_length_mm": 128.0}
    assert a1["position_mm"] == 1128.0
    assert b0 == {"coil_id": "C7", "position_mm": 1000.0, "strip_length_mm": 128.0, "file": "s.png"}
    assert read_place(a1).problems == ()


def test_without_keys_or_length_the_stamp_is_inactive_and_changes_nothing() -> None:
    stamp = MetaStamp()
    parts = frame("a", 0, {"k": 1})
    assert not stamp.active
    assert stamp_frame_parts(parts, stamp) is parts


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"strip_length_mm": 0.0}, "--strip-length-mm must be > 0, got 0"),
        ({"strip_length_mm": 10.0, "start_mm": -1.0}, "--start-mm must be >= 0, got -1"),
    ],
)
def test_a_bad_length_or_start_is_refused(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        MetaStamp({}, **kwargs)


def test_a_recorded_frame_is_stamped_and_its_pixels_and_other_fields_kept() -> None:
    stamp = MetaStamp({"side": "top"}, strip_length_mm=50.0)
    out = stamp_frame_parts(frame("a", 9, {"lot": "L"}), stamp)
    header, payload = parse_frame_parts(out)
    assert (header.camera, header.seq, header.shape) == ("a", 9, STRIP.shape)
    assert header.meta == {"lot": "L", "side": "top", "position_mm": 0.0, "strip_length_mm": 50.0}
    assert bytes(payload) == STRIP.tobytes()


@pytest.mark.parametrize(
    "parts",
    [
        [b"frame/a", b"\xc1not msgpack", b""],  # unreadable header
        [b"frame/a", pack([1, 2]), b""],  # header not a map
        [b"frame/a", pack({"camera": "a", "meta": [1]}), b""],  # meta not a map
        [b"frame/a", pack({"camera": 3}), b""],  # camera not a string
        [b"frame/a", b"x"],  # wrong part count
        [b"other/a", pack({"camera": "a"}), b""],  # not a frame topic
    ],
)
def test_a_bad_recorded_message_goes_out_unchanged_and_uncounted(parts: list[bytes]) -> None:
    stamp = MetaStamp({"coil_id": "C"}, strip_length_mm=10.0)
    assert stamp_frame_parts(parts, stamp) is parts
    assert stamp.next_meta("a")["position_mm"] == 0.0  # the bad one took no position


# -- the CLI -----------------------------------------------------------------------------------


def test_camera_images_carry_file_coil_side_and_advancing_positions(
    tmp_path: Path, make_sub: Callable[[str], zmq.Socket]
) -> None:
    folder = tmp_path / "strips"
    folder.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(folder / name), STRIP)
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    args = ["camera", "--to", endpoint, "--images", str(folder), "--fps", "0", "--count", "3"]
    args += ["--meta", "coil_id=00123", "--meta", "side=bottom"]
    args += ["--strip-length-mm", "128", "--start-mm", "1000"]
    camera = subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=60)
    assert camera.returncode == 0, camera.stderr
    metas = [parse_frame_parts(p)[0].meta for p in recv_n(sub, 3)]
    assert metas == [
        {
            "coil_id": "00123",  # an id stays a string
            "side": "bottom",
            "position_mm": 1000.0 + 128 * i,
            "strip_length_mm": 128.0,
            "file": name,
        }
        for i, name in enumerate(("a.png", "b.png", "c.png"))
    ]


def test_camera_images_without_flags_still_name_their_file(
    tmp_path: Path, make_sub: Callable[[str], zmq.Socket]
) -> None:
    cv2.imwrite(str(tmp_path / "only.png"), STRIP)
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    args = ["camera", "--to", endpoint, "--images", str(tmp_path), "--fps", "0", "--count", "1"]
    camera = subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=60)
    assert camera.returncode == 0, camera.stderr
    assert parse_frame_parts(recv_n(sub, 1)[0])[0].meta == {"file": "only.png"}


def test_replay_stamps_frames_and_passes_a_bad_message_as_recorded(
    tmp_path: Path, make_sub: Callable[[str], zmq.Socket]
) -> None:
    path = tmp_path / "line.edgerec"
    bad = [b"frame/a", b"\xc1", b""]
    with RecordingWriter(path, "t") as writer:
        for parts in (frame("a", 0), bad, frame("b", 0), frame("a", 1, {"lot": "L"})):
            writer.write(parts, recv_ts_ns=0)
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    args = ["replay", str(path), "--to", endpoint, "--as-fast-as-possible"]
    args += ["--meta", "coil_id=C5", "--strip-length-mm", "64"]
    done = subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    got = recv_n(sub, 4)
    assert got[1] == bad
    metas = [parse_frame_parts(p)[0] for p in (got[0], got[2], got[3])]
    assert [(h.camera, h.meta) for h in metas] == [
        ("a", {"coil_id": "C5", "position_mm": 0.0, "strip_length_mm": 64.0}),
        ("b", {"coil_id": "C5", "position_mm": 0.0, "strip_length_mm": 64.0}),
        ("a", {"lot": "L", "coil_id": "C5", "position_mm": 64.0, "strip_length_mm": 64.0}),
    ]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--meta", "position_mm=5"], "positions are numbers, set them with --strip-length-mm"),
        (["--meta", "coil"], "--meta takes key=value"),
        (["--meta", "side=left"], "--meta side must be one of ['top', 'bottom'], got 'left'"),
        (["--strip-length-mm", "-3"], "--strip-length-mm must be > 0, got -3"),
    ],
)
@pytest.mark.parametrize("command", ["camera", "replay"])
def test_bad_meta_flags_are_refused_before_anything_is_sent(
    tmp_path: Path, command: str, flags: list[str], message: str
) -> None:
    path = tmp_path / "r.edgerec"
    with RecordingWriter(path, "t") as writer:
        writer.write(frame("a", 0), recv_ts_ns=0)
    lead = [str(path)] if command == "replay" else []
    result = CliRunner().invoke(app, [command, *lead, "--to", free_endpoint(), *flags])
    assert result.exit_code == 2
    assert message in " ".join(result.output.split())


def test_synthetic_strips_get_the_stamp_too(make_sub: Callable[[str], zmq.Socket]) -> None:
    endpoint = free_endpoint()
    sub = make_sub(endpoint)
    args = ["camera", "--to", endpoint, "--fps", "0", "--count", "2", "--meta", "coil_id=S"]
    camera = subprocess.run([*EDGE, *args], capture_output=True, text=True, timeout=60)
    assert camera.returncode == 0, camera.stderr
    assert [parse_frame_parts(p)[0].meta for p in recv_n(sub, 2)] == [{"coil_id": "S"}] * 2
