"""The Modbus TCP bridge against a real daemon fed by a camera, read by a real pymodbus client."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymodbus.client import ModbusTcpClient

from edge.line.bridges import modbus
from edge.line.bridges.state import BridgeState
from edge.line.bridges.subscriber import Subscriber
from tests.bridge_fixtures import defective_strip, frame, free_port, wait_until
from tests.conftest import gray_strip

ROOT = Path(__file__).resolve().parents[1]
# Not `python -m edge.cli.main`: that runs the app before main.py registers its sub-commands.
EDGE = [sys.executable, "-c", "from edge.cli.main import app; app()"]
CAM1 = modbus.camera_base(0)


@dataclass
class Bridge:
    state: BridgeState
    client: ModbusTcpClient
    port: int

    def registers(self, address: int, count: int) -> list[int]:
        reply = self.client.read_holding_registers(address, count=count)
        assert not reply.isError(), reply
        return list(reply.registers)

    def coils(self, address: int, count: int) -> list[bool]:
        reply = self.client.read_coils(address, count=count)
        assert not reply.isError(), reply
        return list(reply.bits[:count])

    def camera(self, slot: int = 0) -> dict[str, Any]:
        """A camera block decoded by name, as a PLC program would."""
        regs = self.registers(modbus.camera_base(slot), 54)
        out: dict[str, Any] = {}
        for r in modbus.CAMERA_REGISTERS:
            words = regs[r.offset : r.offset + r.size]
            if r.type == "u32":
                out[r.name] = words[0] << 16 | words[1]
            elif r.type == "ascii16":
                out[r.name] = b"".join(w.to_bytes(2, "big") for w in words).rstrip(b"\0").decode()
            else:
                out[r.name] = words[0]
        return out


@pytest.fixture
def modbus_bridge() -> Iterator[Any]:
    running: list[tuple[threading.Event, threading.Thread, Subscriber, ModbusTcpClient]] = []

    def start(source: str, **state_args: Any) -> Bridge:
        state = BridgeState(**state_args)
        port = free_port()
        server = modbus.ModbusBridge(state, "127.0.0.1", port)
        stop = threading.Event()
        thread = threading.Thread(target=modbus.run_forever, args=(server, stop), daemon=True)
        thread.start()
        assert server.ready.wait(30), "the Modbus server did not start"
        subscriber = Subscriber(source, state).start()
        client = ModbusTcpClient("127.0.0.1", port=port, timeout=10)
        assert client.connect()
        running.append((stop, thread, subscriber, client))
        return Bridge(state, client, port)

    yield start
    for stop, thread, subscriber, client in running:
        client.close()
        subscriber.stop()
        stop.set()
        thread.join(10)


def test_defective_strip_sets_the_coil_and_registers_and_ack_clears_it(
    start_daemon, camera_socket, modbus_bridge
) -> None:
    daemon = start_daemon()
    bridge = modbus_bridge(daemon.server.publish_endpoint, cameras=["cam1"])
    # daemon_ok means a status message got through: the subscription is live.
    wait_until(lambda: bridge.coils(0, 1) == [True], what="daemon_ok")
    camera = camera_socket(daemon.source)
    camera.send_multipart(frame("cam1", 7, gray_strip()))
    wait_until(lambda: bridge.camera()["frames"] == 1, what="the clean frame")
    assert bridge.coils(CAM1, 6) == [False, False, False, True, True, False]

    camera.send_multipart(frame("cam1", 8, defective_strip()))
    wait_until(lambda: bridge.coils(CAM1, 1) == [True], what="the defective coil")
    (event,) = [e for e in daemon.subscriber.wait_for(lambda ev: len(ev) >= 2) if e["seq"] == 8]
    largest = max(
        (c for d in event["defects"] for c in d["components"]), key=lambda c: c["area_px"]
    )
    block = bridge.camera()
    assert block["camera_id"] == "cam1"
    assert block["last_seq"] == 8 and block["latched_seq"] == 8
    assert block["class_mask"] == 0b1111 == block["last_class_mask"]  # classes 1..4
    assert block["status"] == 0b11111  # latched, daemon_ok, camera_ok, last defective, in use
    assert block["largest_area"] == largest["area_px"] == 50 * 120
    assert block["largest_x"] == 300 + 120 // 2 and block["largest_width"] == 120
    assert block["largest_class"] in (1, 3) and block["frame_width"] == 1600
    assert (block["frames"], block["defective_frames"]) == (2, 1)
    assert [block[f"class{k}_count"] for k in range(1, 6)] == [1, 1, 1, 1, 0]
    # Global block: map version 1, daemon_ok + a camera latched, one camera slot in use.
    # (Heartbeat, status age and status count move while we read: status comes every 0.1 s.)
    version, _, bridge_status, _, status_count, cameras = bridge.registers(0, 6)
    assert (version, bridge_status, cameras) == (1, 0b11, 1)
    assert status_count > 0

    camera.send_multipart(frame("cam1", 9, gray_strip()))
    wait_until(lambda: bridge.camera()["last_seq"] == 9, what="the next clean frame")
    assert bridge.coils(CAM1, 1) == [True], "a clean frame must not clear the latch"
    assert not bridge.client.write_coil(CAM1 + 1, True).isError()  # ack
    assert bridge.coils(CAM1, 6) == [False, True, False, True, True, False]
    assert bridge.camera()["class_mask"] == 0 and bridge.camera()["largest_area"] == 0
    assert bridge.camera()["defective_frames"] == 1  # ack is not a reset
    assert not bridge.client.write_coil(CAM1 + 2, True).isError()  # reset counters
    assert bridge.camera()["frames"] == 0


def test_plc_cannot_write_status_registers_or_read_only_coils(start_daemon, modbus_bridge) -> None:
    daemon = start_daemon()
    bridge = modbus_bridge(daemon.server.publish_endpoint, cameras=["cam1"])
    reply = bridge.client.write_register(CAM1, 0)
    assert reply.isError() and reply.exception_code == 2
    reply = bridge.client.write_coil(CAM1, False)  # the latch itself: ack is coil +1
    assert reply.isError() and reply.exception_code == 2
    reply = bridge.client.write_coils(CAM1, [False, True])
    assert reply.isError() and reply.exception_code == 2


def test_stale_daemon_drops_the_health_flag_and_the_bridge_survives_a_restart(
    start_daemon, camera_socket, modbus_bridge
) -> None:
    publish = f"tcp://127.0.0.1:{free_port()}"
    daemon = start_daemon(publish=publish)
    bridge = modbus_bridge(publish, cameras=["cam1"], stale_s=1.0)
    wait_until(lambda: bridge.coils(0, 1) == [True], what="daemon_ok")
    daemon.stop()
    wait_until(lambda: bridge.coils(0, 1) == [False], what="daemon_ok to drop")
    assert bridge.registers(2, 1) == [0]  # bridge_status: daemon_ok bit off
    assert bridge.registers(3, 1)[0] >= 10  # status_age in 0.1 s

    daemon = start_daemon(publish=publish)  # same endpoint: a restarted daemon
    wait_until(lambda: bridge.coils(0, 1) == [True], timeout_s=60, what="daemon_ok after restart")
    camera_socket(daemon.source).send_multipart(frame("cam1", 0, defective_strip()))
    wait_until(lambda: bridge.coils(CAM1, 1) == [True], what="a defect after the restart")


def test_plc_md_documents_every_register_and_coil() -> None:
    """docs/plc.md is what a PLC programmer maps from: it must match the code."""
    text = (ROOT / "docs" / "plc.md").read_text()
    rows = set(re.findall(r"^\| (\d+) \| `(\w+)` \|", text, flags=re.M))
    expected = {(str(g.address), g.name) for g in modbus.GLOBAL_REGISTERS}
    expected |= {(str(r.offset), r.name) for r in modbus.CAMERA_REGISTERS}
    expected |= {(str(c.offset), c.name) for c in modbus.GLOBAL_COILS + modbus.CAMERA_COILS}
    assert expected <= rows, f"missing from docs/plc.md: {sorted(expected - rows)}"
    assert f"{modbus.CAMERA_BASE} + {modbus.CAMERA_STRIDE}" in text


def test_cli_serves_modbus_and_stops_on_sigterm(start_daemon, tmp_path: Path) -> None:
    daemon = start_daemon()
    port = free_port()
    config = tmp_path / "bridge.toml"
    config.write_text(f'cameras = ["cam1"]\nlisten = "127.0.0.1:{port}"\n')
    cmd = [*EDGE, "bridge", "modbus"]
    cmd += ["--source", daemon.server.publish_endpoint, "--config", str(config)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env={**os.environ})
    client = ModbusTcpClient("127.0.0.1", port=port, timeout=5)
    try:

        def healthy() -> bool:
            if not client.connected and not client.connect():
                return False
            reply = client.read_holding_registers(0, count=3)
            return not reply.isError() and reply.registers[0] == 1 and reply.registers[2] & 1

        wait_until(healthy, timeout_s=60, what="the bridge process to serve daemon_ok")
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"-> 127.0.0.1:{port}" in err
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_names_a_bad_option() -> None:
    cmd = [*EDGE, "bridge", "modbus", "--listen", "5020"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "listen: '5020' is not host:port" in done.stderr


def test_cli_says_when_the_modbus_port_is_taken() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        cmd = [*EDGE, "bridge", "modbus", "--listen", f"127.0.0.1:{port}"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"error: cannot serve on 127.0.0.1:{port}" in done.stderr
