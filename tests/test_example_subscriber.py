"""examples/c-subscriber against a live daemon: the C decoder must agree with the Python one.

Skips (with the reason) where gcc, libzmq's or msgpack-c's headers are missing; CI may not
have them, and the Python package does not need them.
"""

from __future__ import annotations

import queue
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from edge.protocol import rle
from tests.bridge_fixtures import defective_strip, frame
from tests.conftest import gray_strip

SOURCE = Path(__file__).resolve().parents[1] / "examples" / "c-subscriber" / "edge_subscriber.c"
CFLAGS = ["-O2", "-std=c11", "-D_POSIX_C_SOURCE=200809L", "-Wall", "-Wextra", "-Werror"]


def _pkg_flags() -> tuple[list[str], list[str]]:
    pkg_config = shutil.which("pkg-config")
    if pkg_config is not None:
        for msgpack in ("msgpack-c", "msgpack"):
            mods = ["libzmq", msgpack]
            if subprocess.run([pkg_config, "--exists", *mods], check=False).returncode == 0:
                cflags = subprocess.run(
                    [pkg_config, "--cflags", *mods], capture_output=True, text=True, check=True
                ).stdout.split()
                libs = subprocess.run(
                    [pkg_config, "--libs", *mods], capture_output=True, text=True, check=True
                ).stdout.split()
                return cflags, libs
    return [], ["-lzmq", "-lmsgpackc"]


@pytest.fixture(scope="module")
def c_subscriber(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: the C example subscriber cannot be built here")
    cflags, libs = _pkg_flags()
    probe = subprocess.run(
        [gcc, *cflags, "-E", "-x", "c", "-"],
        input="#include <zmq.h>\n#include <msgpack.h>\n",
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        pytest.skip(
            "libzmq or msgpack-c headers not found (Debian: apt-get install libzmq3-dev "
            f"libmsgpack-dev): {probe.stderr.strip().splitlines()[0]}"
        )
    binary = tmp_path_factory.mktemp("c_subscriber") / "edge_subscriber"
    build = subprocess.run(
        [gcc, *CFLAGS, *cflags, "-o", str(binary), str(SOURCE), *libs],
        capture_output=True,
        text=True,
        check=False,
    )
    assert build.returncode == 0, f"the C example does not build:\n{build.stderr}"
    return binary


class Lines:
    """A subprocess's stdout, read by a thread so the test can wait with a timeout."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.queue.put(line.rstrip("\n"))
            self.queue.put(None)

        threading.Thread(target=pump, daemon=True).start()

    def next(self, timeout_s: float = 30.0) -> str | None:
        try:
            line = self.queue.get(timeout=timeout_s)
        except queue.Empty:
            raise AssertionError(f"no output for {timeout_s}s; so far: {self.lines}") from None
        if line is not None:
            self.lines.append(line)
        return line


def fields(line: str) -> dict[str, str]:
    kind, *pairs = line.split(" ")
    return {"kind": kind, **dict(p.split("=", 1) for p in pairs)}


def row_major_runs(mask: np.ndarray) -> str:
    flat = mask.ravel().view(np.uint8)
    edges = np.flatnonzero(np.diff(flat, prepend=np.uint8(0), append=np.uint8(0)))
    return ",".join(f"{s}:{e - s}" for s, e in zip(edges[0::2], edges[1::2], strict=True))


def expected_line(event: dict[str, Any], d: dict[str, Any]) -> dict[str, str]:
    h, w = event["shape"]
    mask = rle.decode(d["mask_rle"], h, w)
    ys, xs = np.nonzero(mask)
    bbox = f"{xs.min()},{ys.min()},{xs.max() - xs.min() + 1},{ys.max() - ys.min() + 1}"
    return {
        "kind": "defect",
        "camera": event["camera"],
        "seq": str(event["seq"]),
        "class_id": str(d["class_id"]),
        "name": d["name"],
        "score": f"{d['score']:.4f}",
        "area_px": str(d["area_px"]),
        "decoded_px": str(int(mask.sum())),
        "bbox": bbox,
        "runs": row_major_runs(mask),
    }


def run_against_daemon(
    binary: Path, start_daemon: Any, camera_socket: Any, images: list[np.ndarray]
) -> tuple[list[dict[str, Any]], list[str]]:
    daemon = start_daemon()
    cmd = [str(binary), "-s", "-r", "-n", str(len(images)), daemon.server.publish_endpoint]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out = Lines(proc)
        while not (out.next() or "").startswith("status "):
            pass  # a status line: its subscription is live, no event can be missed now
        camera = camera_socket(daemon.source)
        for seq, image in enumerate(images):
            camera.send_multipart(frame("cam1", seq, image))
        while out.next() is not None:
            pass
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    events = daemon.subscriber.wait_for(lambda ev: len(ev) >= len(images))
    return events, [line for line in out.lines if not line.startswith("status ")]


def compare(events: list[dict[str, Any]], lines: list[str]) -> int:
    """Every event as the C subscriber printed it; returns the defects compared."""
    expected: list[dict[str, str]] = []
    for event in sorted(events, key=lambda e: e["seq"]):
        assert event["kind"] == "result"
        expected.append(
            {
                "kind": "result",
                "camera": event["camera"],
                "seq": str(event["seq"]),
                "defective": str(int(event["defective"])),
                "defects": str(len(event["defects"])),
            }
        )
        expected += [expected_line(event, d) for d in event["defects"]]
    got = [fields(line) for line in lines]
    for row in got:
        row.pop("latency_ms", None)
    assert len(got) == len(expected), lines
    for g, e in zip(got, expected, strict=True):
        assert g == e, f"C and Python disagree on {e['kind']} #{e['seq']}"
    return sum(1 for e in expected if e["kind"] == "defect")


def test_c_subscriber_decodes_masks_exactly_as_python(
    c_subscriber: Path, start_daemon, camera_socket
) -> None:
    events, lines = run_against_daemon(
        c_subscriber, start_daemon, camera_socket, [gray_strip(), defective_strip()]
    )
    assert compare(events, lines) == 4  # the defective strip holds classes 1..4
    dark = next(fields(line) for line in lines if "class_id=1 " in line)
    assert dark["decoded_px"] == dark["area_px"] == "6000" and dark["bbox"] == "300,40,120,50"


def test_c_subscriber_on_a_real_severstal_strip(
    c_subscriber: Path, severstal: Path, start_daemon, camera_socket
) -> None:
    """A real strip gives ragged masks of many runs: a harder test of the RLE decoding."""
    path = sorted((severstal / "images").glob("*.jpg"))[0]
    image = cv2.cvtColor(cv2.imread(str(path), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    events, lines = run_against_daemon(c_subscriber, start_daemon, camera_socket, [image])
    assert compare(events, lines) >= 1
