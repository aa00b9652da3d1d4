"""Modbus TCP bridge: the BridgeState as holding registers and coils a PLC can poll.

The register map is defined once, in the tables below, and docs/plc.md is checked against them
by a test. Values are computed from a fresh snapshot on every request, so a PLC always reads
the present state (health flags included) and never a stale copy.

pymodbus 3.16 serves a ``SimDevice`` whose ``action`` hook runs before each request touches
the registers; the hook rewrites the registers from the snapshot and turns coil writes into
acknowledgements and counter resets.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass

from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice
from pymodbus.simulator.simutils import SimUtils

from edge.line.bridges.state import MAX_CLASSES, BridgeState, BridgeView, CameraView

MAP_VERSION = 1
CAMERA_BASE = 100  # camera slot i starts at CAMERA_BASE + i * CAMERA_STRIDE (registers and coils)
CAMERA_STRIDE = 100
U16 = 0xFFFF
U32 = 0xFFFFFFFF
NAME_REGISTERS = 8  # camera id: 16 ASCII bytes, 2 per register, high byte first


@dataclass(frozen=True, slots=True)
class Register:
    offset: int
    name: str
    type: str  # "u16", "u32" (2 registers, high word first), "bits", "ascii16"
    unit: str
    meaning: str
    value: Callable[[CameraView], int | str]

    @property
    def size(self) -> int:
        return {"u16": 1, "bits": 1, "u32": 2, "ascii16": NAME_REGISTERS}[self.type]


def _seq(value: int | None) -> int:
    return 0 if value is None else value & U32


def _status_bits(c: CameraView) -> int:
    return (
        int(c.latched)
        | int(c.daemon_ok) << 1
        | int(c.camera_ok) << 2
        | int(c.last_defective) << 3
        | int(bool(c.camera)) << 4
        | int(c.events_lost > 0) << 5
    )


CAMERA_REGISTERS: tuple[Register, ...] = (
    Register(0, "status", "bits", "-", "bit0 defective (latched), bit1 daemon_ok, bit2 camera_ok, bit3 last frame defective, bit4 slot in use, bit5 events lost", _status_bits),
    Register(1, "heartbeat", "u16", "events", "events received for this camera, wraps at 65535; changes on every frame", lambda c: c.events & U16),
    Register(2, "last_seq", "u32", "-", "seq of the last frame the daemon reported (result, drop or reject)", lambda c: _seq(c.last_seq)),
    Register(4, "class_mask", "bits", "-", "classes seen since the latch was set: bit k-1 for class_id k; 0 when not latched", lambda c: c.latched_mask),
    Register(5, "last_class_mask", "bits", "-", "classes on the last inspected frame", lambda c: c.last_mask),
    Register(6, "latched_seq", "u32", "-", "seq of the frame that set the latch; 0 when not latched", lambda c: _seq(c.latched_seq)),
    Register(8, "frames", "u32", "frames", "frames inspected (results) since reset", lambda c: c.frames & U32),
    Register(10, "defective_frames", "u32", "frames", "defective frames since reset", lambda c: c.defective_frames & U32),
    Register(12, "largest_area", "u32", "px", "area of the largest single defect since the latch was set; 0 when not latched", lambda c: c.largest.area_px & U32 if c.largest else 0),
    Register(14, "largest_class", "u16", "-", "class_id of that defect", lambda c: c.largest.class_id if c.largest else 0),
    Register(15, "largest_x", "u16", "px", "column of that defect's bounding-box centre, from the strip's left edge", lambda c: min(c.largest.x_px, U16) if c.largest else 0),
    Register(16, "largest_width", "u16", "px", "bounding-box width of that defect", lambda c: min(c.largest.width_px, U16) if c.largest else 0),
    Register(17, "frame_width", "u16", "px", "width of the last inspected frame (1600 for a nominal strip)", lambda c: min(c.frame_width_px, U16)),
    Register(18, "gaps", "u32", "events", "gap events (frames that never reached the daemon) since reset", lambda c: c.gaps & U32),
    Register(20, "missing", "u32", "frames", "frames missing inside those gaps since reset", lambda c: c.missing & U32),
    Register(22, "drops", "u32", "frames", "frames dropped by the daemon (overload, shutdown) since reset", lambda c: c.drops & U32),
    Register(24, "rejects", "u32", "frames", "frames rejected by the daemon (malformed) since reset", lambda c: c.rejects & U32),
    Register(26, "restarts", "u32", "events", "camera restarts (seq went backwards) since reset", lambda c: c.restarts & U32),
    Register(28, "events_lost", "u32", "events", "events the daemon published that never reached the bridge, since reset: frames whose outcome the PLC did not see", lambda c: c.events_lost & U32),
    *(
        Register(30 + 2 * k, f"class{k + 1}_count", "u32", "frames", f"frames with class_id {k + 1} since reset", lambda c, k=k: c.class_counts[k] & U32)
        for k in range(MAX_CLASSES)
    ),
    Register(46, "camera_id", "ascii16", "-", "camera id, ASCII, 2 characters per register (high byte first), NUL-padded; empty: slot unused", lambda c: c.camera),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class GlobalRegister:
    address: int
    name: str
    unit: str
    meaning: str
    value: Callable[[BridgeView], int]


def _status_age(view: BridgeView) -> int:
    if view.status_age_s is None:
        return U16
    return min(int(view.status_age_s * 10), U16)


GLOBAL_REGISTERS: tuple[GlobalRegister, ...] = (
    GlobalRegister(0, "map_version", "-", "version of this register map (1)", lambda v: MAP_VERSION),
    GlobalRegister(1, "bridge_heartbeat", "s", "seconds since the bridge started, wraps at 65535: the bridge is alive while it changes", lambda v: int(v.uptime_s) & U16),
    GlobalRegister(2, "bridge_status", "-", "bit0 daemon_ok, bit1 any camera latched", lambda v: int(v.daemon_ok) | int(v.any_latched) << 1),
    GlobalRegister(3, "status_age", "0.1 s", "time since the daemon's last status message; 65535: none yet (or longer than 6553 s)", _status_age),
    GlobalRegister(4, "status_count", "messages", "status messages received, wraps at 65535", lambda v: v.status_count & U16),
    GlobalRegister(5, "cameras", "-", "camera slots in use", lambda v: sum(bool(c.camera) for c in v.cameras)),
    GlobalRegister(6, "camera_base", "-", f"address of camera slot 0's block ({CAMERA_BASE})", lambda v: CAMERA_BASE),
    GlobalRegister(7, "camera_stride", "-", f"addresses between two camera blocks ({CAMERA_STRIDE})", lambda v: CAMERA_STRIDE),
    GlobalRegister(8, "max_cameras", "-", "camera slots served", lambda v: len(v.cameras)),
    GlobalRegister(9, "ignored_events", "events", "events for cameras without a slot, plus invalid messages; wraps at 65535", lambda v: (v.ignored_events + v.invalid_messages) & U16),
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Coil:
    offset: int
    name: str
    writable: bool
    meaning: str


CAMERA_COILS: tuple[Coil, ...] = (
    Coil(0, "defective", False, "latched: set by a defective frame, cleared by ack (or after hold_s)"),
    Coil(1, "ack", True, "each write of 1 clears this camera's latch; reads back the last value written"),
    Coil(2, "reset_counts", True, "each write of 1 zeroes this camera's counters; reads back the last value written"),
    Coil(3, "daemon_ok", False, "a daemon status message arrived within stale_s"),
    Coil(4, "camera_ok", False, "daemon_ok and an event for this camera within camera_stale_s"),
    Coil(5, "last_defective", False, "the last inspected frame had a defect (not latched)"),
)  # fmt: skip

GLOBAL_COILS: tuple[Coil, ...] = (
    Coil(0, "daemon_ok", False, "a daemon status message arrived within stale_s"),
    Coil(1, "any_defective", False, "some camera's defective latch is set"),
    Coil(2, "ack_all", True, "each write of 1 clears every camera's latch; reads back the last value written"),
    Coil(3, "reset_all", True, "each write of 1 zeroes every camera's counters; reads back the last value written"),
)  # fmt: skip


def camera_base(slot: int) -> int:
    return CAMERA_BASE + slot * CAMERA_STRIDE


def _ascii_registers(text: str) -> list[int]:
    raw = text.encode("ascii", "replace")[: 2 * NAME_REGISTERS].ljust(2 * NAME_REGISTERS, b"\0")
    return [raw[i] << 8 | raw[i + 1] for i in range(0, len(raw), 2)]


def encode_registers(view: BridgeView, size: int) -> list[int]:
    """The holding (and input) registers 0..size-1 for one snapshot."""
    regs = [0] * size
    for g in GLOBAL_REGISTERS:
        regs[g.address] = g.value(view)
    for cam in view.cameras:
        base = camera_base(cam.slot)
        for r in CAMERA_REGISTERS:
            value = r.value(cam)
            if r.type == "ascii16":
                words = _ascii_registers(str(value))
            elif r.type == "u32":
                words = [int(value) >> 16 & U16, int(value) & U16]
            else:
                words = [int(value) & U16]
            regs[base + r.offset : base + r.offset + len(words)] = words
    return regs


def encode_coils(view: BridgeView, size: int) -> list[bool]:
    bits = [False] * size
    bits[0], bits[1] = view.daemon_ok, view.any_latched
    for cam in view.cameras:
        base = camera_base(cam.slot)
        bits[base + 0] = cam.latched
        bits[base + 3] = cam.daemon_ok
        bits[base + 4] = cam.camera_ok
        bits[base + 5] = cam.last_defective
    return bits


def map_size(max_cameras: int) -> int:
    """Addresses served (a multiple of 16 so coils pack into whole registers)."""
    end = camera_base(max_cameras)
    return (end + 15) // 16 * 16


READ_CODES = {1: "c", 2: "d", 3: "h", 4: "i"}
COIL_WRITE_CODES = (5, 15)


class ModbusBridge:
    """A Modbus TCP server over a BridgeState. ``serve`` runs until ``stop``."""

    def __init__(self, state: BridgeState, host: str, port: int) -> None:
        self.state = state
        self.host, self.port = host, port
        max_cameras = state.max_cameras
        self.size = map_size(max_cameras)
        self._writable = {c.offset for c in GLOBAL_COILS if c.writable}
        for slot in range(max_cameras):
            self._writable |= {camera_base(slot) + c.offset for c in CAMERA_COILS if c.writable}

        def bits() -> list[SimData]:
            return [SimData(0, count=self.size, values=False, datatype=DataType.BITS)]

        def registers() -> list[SimData]:
            # Read-only: a PLC writing a register gets exception 2 (illegal data address).
            kind = DataType.REGISTERS
            return [SimData(0, count=self.size, values=0, datatype=kind, readonly=True)]

        # Coils and discrete inputs carry the same flags, holding and input registers the same
        # values: a PLC may read either table (FC1/FC2, FC3/FC4).
        self.device = SimDevice(
            id=0,  # every unit id answers: PLCs disagree on what to send over TCP
            simdata=(bits(), bits(), registers(), registers()),
            action=self._action,
        )
        self._written: dict[int, bool] = {}
        self.server: ModbusTcpServer | None = None
        self.ready = threading.Event()

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if set_values is not None and function_code in COIL_WRITE_CODES:
            written = range(address, address + len(set_values))
            if any(a not in self._writable for a in written):
                return ExcCodes.ILLEGAL_ADDRESS
            for a, value in zip(written, set_values, strict=True):
                # Read back as written: the Modbus reply to a write echoes the value (pymodbus
                # builds it by reading the coil again), and a PLC may check the echo.
                self._written[a] = bool(value)
                if value:
                    self._command(a)
        view = self.state.snapshot()
        if function_code in (3, 4, 6, 16, 22, 23):
            registers[: self.size] = encode_registers(view, self.size)
        else:
            bits = encode_coils(view, self.size)
            for a, value in self._written.items():
                bits[a] = value
            words = SimUtils.bitsToRegisters(bits)
            registers[: len(words)] = words
        return None

    def _command(self, address: int) -> None:
        if address < CAMERA_BASE:
            slot = None
            offset = address
            names = {c.offset: c.name for c in GLOBAL_COILS}
        else:
            slot, offset = divmod(address - CAMERA_BASE, CAMERA_STRIDE)
            names = {c.offset: c.name for c in CAMERA_COILS}
        name = names.get(offset, "")
        if name in ("ack", "ack_all"):
            self.state.ack(slot)
        elif name in ("reset_counts", "reset_all"):
            self.state.reset(slot)

    async def serve(self) -> None:
        self.server = ModbusTcpServer(self.device, address=(self.host, self.port))
        try:
            await self.server.serve_forever(background=True)
        except RuntimeError:  # pymodbus's word for "could not listen"; its log says why
            raise OSError(f"cannot listen on {self.host}:{self.port} (in use?)") from None
        self.ready.set()
        await self.server.serving

    async def shutdown(self) -> None:
        if self.server is not None:
            await self.server.shutdown()


def run_forever(bridge: ModbusBridge, stop: threading.Event) -> None:
    """Serve until ``stop`` is set (from a signal handler or another thread)."""

    async def main() -> None:
        serving = asyncio.create_task(bridge.serve())
        while not stop.is_set() and not serving.done():
            await asyncio.sleep(0.1)
        await bridge.shutdown()
        await serving

    asyncio.run(main())
