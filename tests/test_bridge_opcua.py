"""The OPC UA bridge against a real daemon fed by a camera, browsed by a real asyncua client."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from asyncua import Client, ua

from edge.line.bridges import opcua
from edge.line.bridges.state import BridgeState
from edge.line.bridges.subscriber import Subscriber
from tests.bridge_fixtures import defective_strip, frame, free_port
from tests.conftest import gray_strip


@pytest.fixture
def opcua_bridge() -> Iterator[Any]:
    running: list[tuple[threading.Event, threading.Thread, Subscriber]] = []

    def start(source: str, **state_args: Any) -> tuple[BridgeState, str]:
        state = BridgeState(**state_args)
        endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edge"
        server = opcua.OpcUaBridge(state, endpoint, interval_s=0.05)
        stop = threading.Event()
        thread = threading.Thread(target=opcua.run_forever, args=(server, stop), daemon=True)
        thread.start()
        assert server.ready.wait(60), "the OPC UA server did not start"
        subscriber = Subscriber(source, state, on_defect=server.notify).start()
        running.append((stop, thread, subscriber))
        return state, endpoint

    yield start
    for stop, thread, subscriber in running:
        subscriber.stop()
        stop.set()
        thread.join(30)


class Events:
    def __init__(self) -> None:
        self.received: list[Any] = []

    def event_notification(self, event: Any) -> None:
        self.received.append(event)


async def poll(read: Any, want: Any, what: str, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while (value := await read()) != want:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}: {value!r} != {want!r}")
        await asyncio.sleep(0.05)
    return value


def test_client_browses_camera_folders_reads_values_and_gets_the_defect_event(
    start_daemon, camera_socket, opcua_bridge
) -> None:
    daemon = start_daemon()
    state, endpoint = opcua_bridge(daemon.server.publish_endpoint, cameras=["cam1"])
    camera = camera_socket(daemon.source)

    async def scenario() -> None:
        async with Client(endpoint, timeout=30) as client:
            idx = await client.get_namespace_index(opcua.NAMESPACE)
            edge = await client.nodes.objects.get_child(f"{idx}:Edge")
            names = {(await n.read_browse_name()).Name for n in await edge.get_children()}
            assert names == {"Bridge", "cam1"}
            cam = await edge.get_child(f"{idx}:cam1")
            children = {(await n.read_browse_name()).Name: n for n in await cam.get_children()}
            assert {v.name for v in opcua.CAMERA_VARIABLES} | {"Acknowledge"} <= set(children)

            def node(name: str) -> Any:
                return client.get_node(ua.NodeId(name, idx))

            defective = node("cam1.Defective")
            assert (await defective.read_data_type_as_variant_type()) == ua.VariantType.Boolean
            text = (await defective.read_description()).Text
            assert "Acknowledge" in text
            area = node("cam1.LargestArea")
            unit = await (await area.get_child("0:EngineeringUnits")).read_value()
            assert unit.DisplayName.Text == "px"
            assert (await area.read_data_type_as_variant_type()) == ua.VariantType.UInt32
            await poll(node("Bridge.DaemonOk").read_value, True, "DaemonOk")

            events = Events()
            subscription = await client.create_subscription(50, events)
            event_type = await client.nodes.base_event_type.get_child(f"{idx}:DefectEventType")
            await subscription.subscribe_events(client.nodes.server, event_type)

            camera.send_multipart(frame("cam1", 3, defective_strip()))
            await poll(defective.read_value, True, "Defective")
            await poll(node("cam1.LargestArea").read_value, 50 * 120, "LargestArea")
            assert await node("cam1.ClassMask").read_value() == 0b1111
            assert await node("cam1.LastSeq").read_value() == 3
            assert await node("cam1.LargestX").read_value() == 360
            assert await node("cam1.Class2Count").read_value() == 1
            deadline = time.monotonic() + 30
            while not events.received and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            (event,) = events.received
            assert (event.Camera, event.Seq, event.ClassMask) == ("cam1", 3, 0b1111)
            assert event.LargestArea == 6000 and event.LargestX == 360

            # The same values as the state the Modbus bridge would serve.
            view = state.snapshot().cameras[0]
            assert view.largest is not None and view.largest.area_px == 6000

            await node("cam1.Acknowledge").write_value(
                ua.DataValue(ua.Variant(True, ua.VariantType.Boolean))
            )
            await poll(defective.read_value, False, "Defective cleared by Acknowledge")
            await poll(node("cam1.Acknowledge").read_value, False, "Acknowledge written back")
            camera.send_multipart(frame("cam1", 4, gray_strip()))
            await poll(node("cam1.LastSeq").read_value, 4, "the clean frame")
            assert await defective.read_value() is False
            assert await node("cam1.Frames").read_value() == 2

    asyncio.run(scenario())


def test_daemon_health_and_new_cameras_appear_as_they_are_seen(
    start_daemon, camera_socket, opcua_bridge
) -> None:
    daemon = start_daemon()
    _, endpoint = opcua_bridge(daemon.server.publish_endpoint, stale_s=1.0)

    async def scenario() -> None:
        async with Client(endpoint, timeout=30) as client:
            idx = await client.get_namespace_index(opcua.NAMESPACE)
            ok = client.get_node(ua.NodeId("Bridge.DaemonOk", idx))
            await poll(ok.read_value, True, "DaemonOk")
            camera_socket(daemon.source).send_multipart(frame("line-top", 0, gray_strip()))
            seq = client.get_node(ua.NodeId("line-top.LastSeq", idx))

            async def last_seq() -> Any:
                try:
                    return await seq.read_value()
                except ua.UaStatusCodeError:  # the folder is not there yet
                    return None

            await poll(last_seq, 0, "the new camera's folder")
            await asyncio.to_thread(daemon.stop)
            await poll(ok.read_value, False, "DaemonOk to drop")
            age = await client.get_node(ua.NodeId("Bridge.StatusAge", idx)).read_value()
            assert age >= 1.0

    asyncio.run(scenario())


def test_a_camera_id_that_clashes_with_a_bridge_node_is_left_out_not_fatal(opcua_bridge) -> None:
    state, endpoint = opcua_bridge("tcp://127.0.0.1:1", cameras=["Bridge", "cam1", "cam1.Frames"])
    state.apply("event/cam1", {"v": 1, "kind": "drop", "camera": "cam1", "seq": 5, "reason": "x"})

    async def scenario() -> None:
        async with Client(endpoint, timeout=30) as client:
            idx = await client.get_namespace_index(opcua.NAMESPACE)
            await poll(client.get_node(ua.NodeId("cam1.LastSeq", idx)).read_value, 5, "cam1")
            bridge = client.get_node(ua.NodeId("Bridge", idx))
            names = {(await n.read_browse_name()).Name for n in await bridge.get_children()}
            assert "DaemonOk" in names and "Defective" not in names
            frames = client.get_node(ua.NodeId("cam1.Frames", idx))
            assert (await frames.read_node_class()) == ua.NodeClass.Variable

    asyncio.run(scenario())


def test_cli_serves_opcua_and_stops_on_sigterm(start_daemon) -> None:
    daemon = start_daemon()
    endpoint = f"opc.tcp://127.0.0.1:{free_port()}/edge"
    cmd = [sys.executable, "-c", "from edge.cli.main import app; app()", "bridge", "opcua"]
    cmd += ["--source", daemon.server.publish_endpoint, "--endpoint", endpoint, "--camera", "cam1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)

    async def healthy() -> None:
        deadline = time.monotonic() + 60
        while True:
            try:
                async with Client(endpoint, timeout=10) as client:
                    idx = await client.get_namespace_index(opcua.NAMESPACE)
                    ok = client.get_node(ua.NodeId("cam1.DaemonOk", idx))
                    await poll(ok.read_value, True, "cam1.DaemonOk from the bridge process")
                    return
            except (OSError, TimeoutError):  # not listening yet
                assert proc.poll() is None, "the bridge process exited"
                assert time.monotonic() < deadline, "the bridge process never served"
                await asyncio.sleep(0.2)

    try:
        asyncio.run(healthy())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        assert f"-> {endpoint}" in err
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
