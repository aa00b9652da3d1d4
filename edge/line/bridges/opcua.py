"""OPC UA bridge: the BridgeState as typed variables, one folder per camera, plus defect events.

Node ids are strings a PLC programmer can type: ``ns=<edge namespace>;s=<camera>.<Variable>``
(e.g. ``s=cam1.Defective``) and ``s=Bridge.<Variable>`` for the daemon's health. An update task
writes the values that changed every ``interval_s``; defective frames arrive from the
subscriber thread through a bounded queue and become ``DefectEventType`` events on the Server
object, so neither side ever waits on the other.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from asyncua import Node, Server, ua

from edge.line.bridges.state import MAX_CLASSES, BridgeState, BridgeView, CameraView, DefectNotice

log = structlog.get_logger("edge.bridge")

NAMESPACE = "urn:edge:plc-bridge"
RESERVED = ("Edge", "Bridge")  # node ids the bridge's own nodes use
EVENT_QUEUE = 1000  # defect notices waiting for the update task; more are counted, not queued


def _unece(code: str) -> int:
    """OPC UA UnitId of a UN/CEFACT common code (OPC 10000-8, 5.6.3)."""
    value = 0
    for ch in code:
        value = value << 8 | ord(ch)
    return value


UNITS: dict[str, ua.EUInformation] = {
    "s": ua.EUInformation(
        NamespaceUri="http://www.opcfoundation.org/UA/units/un/cefact",
        UnitId=_unece("SEC"),
        DisplayName=ua.LocalizedText("s"),
        Description=ua.LocalizedText("second"),
    ),
    # Pixels and counts have no UN/CEFACT code; -1 says "no code", the names still show.
    "px": ua.EUInformation(
        UnitId=-1, DisplayName=ua.LocalizedText("px"), Description=ua.LocalizedText("pixel")
    ),
    "frames": ua.EUInformation(
        UnitId=-1, DisplayName=ua.LocalizedText("frames"), Description=ua.LocalizedText("frames")
    ),
    "events": ua.EUInformation(
        UnitId=-1, DisplayName=ua.LocalizedText("events"), Description=ua.LocalizedText("events")
    ),
}

V = ua.VariantType


@dataclass(frozen=True, slots=True)
class Variable:
    name: str
    type: ua.VariantType
    unit: str | None
    description: str
    value: Callable[[CameraView], Any]


def _seq(value: int | None) -> int:
    return -1 if value is None else value


CAMERA_VARIABLES: tuple[Variable, ...] = (
    Variable("Defective", V.Boolean, None, "Latched: set by a defective frame, cleared by Acknowledge (or after hold_s)", lambda c: c.latched),
    Variable("CameraOk", V.Boolean, None, "DaemonOk and an event for this camera within camera_stale_s", lambda c: c.camera_ok),
    Variable("DaemonOk", V.Boolean, None, "A daemon status message arrived within stale_s", lambda c: c.daemon_ok),
    Variable("LastDefective", V.Boolean, None, "The last inspected frame had a defect (not latched)", lambda c: c.last_defective),
    Variable("Heartbeat", V.UInt32, "events", "Events received for this camera; changes on every frame", lambda c: c.events & 0xFFFFFFFF),
    Variable("LastSeq", V.Int64, None, "Seq of the last frame the daemon reported (result, drop or reject); -1: none yet", lambda c: _seq(c.last_seq)),
    Variable("ClassMask", V.UInt16, None, "Classes seen since the latch was set: bit k-1 for class_id k", lambda c: c.latched_mask),
    Variable("LastClassMask", V.UInt16, None, "Classes on the last inspected frame", lambda c: c.last_mask),
    Variable("LatchedSeq", V.Int64, None, "Seq of the frame that set the latch; -1 when not latched", lambda c: _seq(c.latched_seq)),
    Variable("Frames", V.UInt32, "frames", "Frames inspected since reset", lambda c: c.frames),
    Variable("DefectiveFrames", V.UInt32, "frames", "Defective frames since reset", lambda c: c.defective_frames),
    Variable("LargestArea", V.UInt32, "px", "Area of the largest single defect since the latch was set; 0 when not latched", lambda c: c.largest.area_px if c.largest else 0),
    Variable("LargestClass", V.UInt16, None, "class_id of that defect; 0 when not latched", lambda c: c.largest.class_id if c.largest else 0),
    Variable("LargestX", V.UInt32, "px", "Column of that defect's bounding-box centre, from the strip's left edge", lambda c: c.largest.x_px if c.largest else 0),
    Variable("LargestWidth", V.UInt32, "px", "Bounding-box width of that defect", lambda c: c.largest.width_px if c.largest else 0),
    Variable("FrameWidth", V.UInt32, "px", "Width of the last inspected frame", lambda c: c.frame_width_px),
    Variable("Gaps", V.UInt32, "events", "Gap events (frames that never reached the daemon) since reset", lambda c: c.gaps),
    Variable("Missing", V.UInt32, "frames", "Frames missing inside those gaps since reset", lambda c: c.missing),
    Variable("Drops", V.UInt32, "frames", "Frames dropped by the daemon since reset", lambda c: c.drops),
    Variable("Rejects", V.UInt32, "frames", "Frames rejected by the daemon since reset", lambda c: c.rejects),
    Variable("Restarts", V.UInt32, "events", "Camera restarts (seq went backwards) since reset", lambda c: c.restarts),
    Variable("EventsLost", V.UInt32, "events", "Events the daemon published that never reached the bridge, since reset", lambda c: c.events_lost),
    *(
        Variable(f"Class{k + 1}Count", V.UInt32, "frames", f"Frames with class_id {k + 1} since reset", lambda c, k=k: c.class_counts[k])
        for k in range(MAX_CLASSES)
    ),
)  # fmt: skip

BRIDGE_VARIABLES: tuple[tuple[str, ua.VariantType, str | None, str, Callable[[BridgeView], Any]], ...] = (
    ("DaemonOk", V.Boolean, None, "A daemon status message arrived within stale_s", lambda v: v.daemon_ok),
    ("AnyDefective", V.Boolean, None, "Some camera's Defective latch is set", lambda v: v.any_latched),
    ("StatusAge", V.Double, "s", "Time since the daemon's last status message; -1: none yet", lambda v: -1.0 if v.status_age_s is None else round(v.status_age_s, 1)),
    ("StatusCount", V.UInt32, "events", "Status messages received", lambda v: v.status_count),
    ("Daemon", V.String, None, "The daemon id from its status messages", lambda v: v.daemon),
    ("Uptime", V.Double, "s", "Seconds since the bridge started", lambda v: round(v.uptime_s, 1)),
)  # fmt: skip

# Writable by clients; the bridge acts on True and writes False back.
COMMANDS = (
    ("Acknowledge", "Write True to clear this camera's Defective latch"),
    ("ResetCounts", "Write True to zero this camera's counters"),
)

EVENT_FIELDS = (
    ("Camera", V.String),
    ("Seq", V.Int64),
    ("ClassMask", V.UInt16),
    ("Classes", V.String),
    ("LargestArea", V.UInt32),
    ("LargestX", V.UInt32),
)


class OpcUaBridge:
    def __init__(self, state: BridgeState, endpoint: str, *, interval_s: float = 0.1) -> None:
        self.state = state
        self.endpoint = endpoint
        self.interval_s = interval_s
        self.server = Server()
        self.ready = threading.Event()
        self.events_lost = 0
        self._queue: asyncio.Queue[DefectNotice] = asyncio.Queue(EVENT_QUEUE)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cameras: dict[str, dict[str, Node]] = {}
        self._bridge_nodes: dict[str, Node] = {}
        self._written: dict[Node, Any] = {}

    def notify(self, notice: DefectNotice) -> None:
        """Called from the subscriber thread for each defective frame; never blocks."""
        if self._loop is None:  # not serving yet: no client can be subscribed to events
            return
        # RuntimeError: the loop closed under us, the bridge is shutting down.
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self._enqueue, notice)

    def _enqueue(self, notice: DefectNotice) -> None:
        try:
            self._queue.put_nowait(notice)
        except asyncio.QueueFull:
            self.events_lost += 1

    async def _setup(self) -> None:
        await self.server.init()
        self.server.set_endpoint(self.endpoint)
        self.server.set_server_name("edge PLC bridge")
        # Plain TCP like the Modbus bridge: it serves a cell network and binds to localhost by
        # default. Offering no encrypted endpoint keeps clients from trying one that cannot work.
        self.server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        self.idx = await self.server.register_namespace(NAMESPACE)
        objects = self.server.nodes.objects
        self.root = await objects.add_folder(ua.NodeId("Edge", self.idx), self._name("Edge"))
        bridge = await self.root.add_folder(ua.NodeId("Bridge", self.idx), self._name("Bridge"))
        for name, vtype, unit, text, _ in BRIDGE_VARIABLES:
            self._bridge_nodes[name] = await self._variable(
                bridge, "Bridge", name, vtype, unit, text
            )
        self.event_type = await self.server.create_custom_event_type(
            self.idx, "DefectEventType", ua.ObjectIds.BaseEventType, list(EVENT_FIELDS)
        )
        self.generator = await self.server.get_event_generator(self.event_type)

    def _name(self, name: str) -> ua.QualifiedName:
        # Browse names in the edge namespace; a plain str would be parsed ("2:x" = ns 2).
        return ua.QualifiedName(name, self.idx)

    async def _variable(
        self,
        parent: Node,
        prefix: str,
        name: str,
        vtype: ua.VariantType,
        unit: str | None,
        text: str,
    ) -> Node:
        node = await parent.add_variable(
            ua.NodeId(f"{prefix}.{name}", self.idx),
            self._name(name),
            ua.get_default_value(vtype),
            vtype,
        )
        await node.write_attribute(
            ua.AttributeIds.Description, ua.DataValue(ua.Variant(ua.LocalizedText(text)))
        )
        if unit is not None:
            prop = await node.add_property(
                ua.NodeId(f"{prefix}.{name}.EngineeringUnits", self.idx),
                ua.QualifiedName("EngineeringUnits", 0),  # the standard property's name
                UNITS[unit],
                datatype=ua.NodeId(ua.ObjectIds.EUInformation),
            )
            await prop.write_attribute(
                ua.AttributeIds.Description,
                ua.DataValue(ua.Variant(ua.LocalizedText(f"unit of {name}"))),
            )
        return node

    async def _camera_folder(self, camera: str) -> dict[str, Node]:
        nodes = self._cameras.get(camera)
        if nodes is not None:
            return nodes
        try:
            if camera in RESERVED:
                raise ValueError("the bridge's own nodes use this id")
            nodes = await self._create_camera(camera)
        except (ValueError, ua.UaError) as exc:
            # E.g. "cam1.Frames" beside "cam1": node ids clash. Said once, then left out.
            log.error("camera not served over OPC UA", camera=camera, error=repr(exc))
            nodes = {}
        self._cameras[camera] = nodes
        return nodes

    async def _create_camera(self, camera: str) -> dict[str, Node]:
        folder = await self.root.add_folder(ua.NodeId(camera, self.idx), self._name(camera))
        nodes = {}
        for var in CAMERA_VARIABLES:
            nodes[var.name] = await self._variable(
                folder, camera, var.name, var.type, var.unit, var.description
            )
        for name, text in COMMANDS:
            node = await self._variable(folder, camera, name, V.Boolean, None, text)
            await node.set_writable()
            nodes[name] = node
        return nodes

    async def _write(self, node: Node, value: Any, vtype: ua.VariantType) -> None:
        if vtype == V.UInt32:
            value &= 0xFFFFFFFF  # wraps like the Modbus registers rather than failing the write
        if self._written.get(node) != value:
            await node.write_value(ua.DataValue(ua.Variant(value, vtype)))
            self._written[node] = value

    async def update(self) -> None:
        """One pass: commands from clients, then every value that changed, then events."""
        for camera, nodes in self._cameras.items():
            if not nodes:
                continue
            slot = self.state.slot_of(camera)
            if await nodes["Acknowledge"].read_value():
                self.state.ack(slot)
                await nodes["Acknowledge"].write_value(False)
            if await nodes["ResetCounts"].read_value():
                self.state.reset(slot)
                await nodes["ResetCounts"].write_value(False)
        view = self.state.snapshot()
        for name, vtype, _, _, value in BRIDGE_VARIABLES:
            await self._write(self._bridge_nodes[name], value(view), vtype)
        for cam in view.cameras:
            if not cam.camera:
                continue
            nodes = await self._camera_folder(cam.camera)
            if not nodes:
                continue
            for var in CAMERA_VARIABLES:
                await self._write(nodes[var.name], var.value(cam), var.type)
        while not self._queue.empty():
            await self._emit(self._queue.get_nowait())

    async def _emit(self, notice: DefectNotice) -> None:
        event: Any = self.generator.event
        largest = notice.largest
        event.Camera = notice.camera
        event.Seq = notice.seq
        event.ClassMask = notice.class_mask
        event.Classes = ",".join(notice.names)
        event.LargestArea = largest.area_px if largest else 0
        event.LargestX = largest.x_px if largest else 0
        event.Severity = 700
        event.SourceName = notice.camera
        await self.generator.trigger(message=f"{notice.camera} #{notice.seq}: {event.Classes}")

    async def serve(self, stop: threading.Event) -> None:
        self._loop = asyncio.get_running_loop()
        # asyncua logs every client connection at INFO; the bridge's own log says what matters.
        logging.getLogger("asyncua").setLevel(logging.WARNING)
        await self._setup()
        for camera in list(self.state_cameras()):
            await self._camera_folder(camera)
        async with self.server:
            self.ready.set()
            log.info("opc ua bridge serving", endpoint=self.endpoint)
            while not stop.is_set():
                try:
                    await self.update()
                except Exception as exc:  # a bridge that serves for months must outlive a bug
                    log.error("opc ua update failed", error=repr(exc), throttle=True)
                await asyncio.sleep(self.interval_s)

    def state_cameras(self) -> list[str]:
        return [c.camera for c in self.state.snapshot().cameras if c.camera]


def run_forever(bridge: OpcUaBridge, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (from a signal handler or another thread)."""
    asyncio.run(bridge.serve(stop))
