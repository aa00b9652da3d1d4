"""The systemd unit and example configuration, and ``edge install-service`` that writes them.

The unit text lives here (not only in systemd/) so an installed package can write it; the copy
in systemd/edge.service is this template rendered with the defaults, and a test keeps the two
the same.
"""

from __future__ import annotations

import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

DEFAULT_EXEC = "/opt/edge/.venv/bin/edge"
DEFAULT_CONFIG = "/etc/edge/edge.toml"
DEFAULT_USER = "edge"

# The sandbox every edge unit shares (the daemon's, and the plant subscribers' in
# edge.tools.plant_units): no kernel, clock or namespace changes, no capabilities.
SANDBOX = """\
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
CapabilityBoundingSet=
AmbientCapabilities=
UMask=0027
"""

UNIT_TEMPLATE = (
    """\
# edge: the steel-strip inspection daemon as a systemd service.
# Install: edge install-service (see docs/operations.md), then
#   systemctl daemon-reload && systemctl enable --now edge
[Unit]
Description=edge steel-strip surface inspection daemon
Wants=network-online.target
After=network-online.target

[Service]
# READY=1 is sent once the models passed their self-test and every socket is bound.
Type=notify
NotifyAccess=main
ExecStart={exec_start} run --config {config}
# SIGHUP reloads models, thresholds and config atomically; a bad model is refused and the old
# one keeps serving (see the journal for why).
ExecReload=/bin/kill -HUP $MAINPID
# The daemon pings only while its inference loop goes round: a hung model gets it restarted.
WatchdogSec=30
Restart=on-failure
RestartSec=2
# Loading models (or TensorRT engines) takes a while on a cold machine.
TimeoutStartSec=180
# SIGTERM drains frames in flight (drain_timeout_s, 10 s by default) and then exits 0.
TimeoutStopSec=30
KillMode=mixed
User={user}
Group={user}
# The GPU (nvidia*, nvidia-uvm) is reached through the video group and the device list below.
SupplementaryGroups=video
Environment=PYTHONUNBUFFERED=1

# Hardening: the daemon only reads its config and models and talks over the network.
NoNewPrivileges=yes
ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
# What it writes: its pid file and any ipc:// sockets, in /run/edge (created for it).
RuntimeDirectory=edge
RuntimeDirectoryMode=0750
ReadWritePaths=/run/edge
# Each camera's last seq, kept across restarts so frames lost to a crash are reported as a
# gap: systemd creates /var/lib/edge, writable by the daemon, and sets $STATE_DIRECTORY.
StateDirectory=edge
StateDirectoryMode=0750
# OpenVINO's compiled models (backend openvino or auto), so a restart skips compiling:
# systemd creates /var/cache/edge and sets $CACHE_DIRECTORY (the default openvino_cache).
CacheDirectory=edge
CacheDirectoryMode=0750
# With rebuild_stale = true the daemon rebuilds stale TensorRT engines in its engine folder,
# which must then be writable too, e.g.: ReadWritePaths=/run/edge /var/lib/edge/engines
"""
    + SANDBOX
    + """\
# No MemoryDenyWriteExecute: CUDA, TensorRT and ONNX Runtime generate code at run time.
# Devices: nothing but the basics and the NVIDIA GPU (harmless where there is none).
DevicePolicy=closed
DeviceAllow=char-nvidia-frontend rw
DeviceAllow=char-nvidia-uvm rw
DeviceAllow=char-nvidia-caps r
DeviceAllow=/dev/nvidiactl rw
DeviceAllow=/dev/nvidia-uvm rw
DeviceAllow=/dev/nvidia-uvm-tools rw
LimitNOFILE=65536

[Install]
WantedBy=multi-user.target
"""
)

EXAMPLE_CONFIG = """\
# /etc/edge/edge.toml: the daemon's configuration (keys are the `edge run` options with
# underscores). Relative paths are relative to this file. `systemctl reload edge` re-reads it.

# Cameras the daemon connects to (or bind_sources = ["tcp://0.0.0.0:5555"] for cameras that
# connect to it).
sources = ["tcp://cam1:5555", "tcp://cam2:5555"]
# Where subscribers (PLC bridges, dashboards) connect. Localhost unless you mean otherwise.
publish = "tcp://127.0.0.1:5556"
# models = "/opt/edge/models"     # default: the reference models shipped with the package

# The backend: onnxruntime (CPU, the default), openvino (Intel CPUs, iGPUs, NPUs: pip install
# 'edge[openvino]'), tensorrt (NVIDIA, with engines = "..."), or auto, which picks and logs why.
backend = "onnxruntime"
# openvino_device = "CPU"         # default: CPU; or GPU, GPU.1, NPU
# openvino_precision = "auto"     # default: auto, which is bf16 on CPUs with AMX or AVX-512 BF16
# check_images = "/var/lib/edge/check"  # recorded strips auto checks OpenVINO on; unset: synthetic ones

# Inference: 0 = auto (CPU: one one-thread worker per core, up to 4; GPU: one worker). The
# `inference workers` log line at start says what was chosen.
workers = 0
threads = 0                       # ONNX Runtime threads per worker
# cpu_scheduling = "batch"        # default: batch, for fewer context switches; or inherit (CPUSchedulingPolicy=)
max_batch = 32                    # tiles per model call; `edge bench --mode backend` finds the best

# Load shedding: strips waiting for inference, then drop-oldest (each drop is an event).
queue_size = 16
overload = "drop-oldest"
# ZeroMQ buffers per camera (frames) and per subscriber (events): they bound memory.
rcvhwm = 200
sndhwm = 10000
max_message_bytes = 33554432      # 32 MiB: a bigger message drops the connection (the daemon reconnects)

# The largest frame and the number of camera ids it takes; more is rejected before decoding.
max_frame_pixels = 1638400        # 4 nominal 256 x 1600 strips
max_frame_height = 1024
max_frame_width = 6400
max_cameras = 64

# Each camera's last seq survives a crash or restart, so frames lost meanwhile show as a gap.
# Under systemd the unit's StateDirectory= provides /var/lib/edge: no need to set it here.
# state_dir = "/var/lib/edge"
state_interval_s = 1.0

# Prometheus /metrics, /healthz and /readyz; keep it on localhost or a management network.
metrics = "127.0.0.1:9108"
stall_timeout_s = 10.0            # inference loop silent this long: /readyz 503, no watchdog
drain_timeout_s = 10.0
pid_file = "/run/edge/edge.pid"   # for `edge reload --pid-file`
log_format = "json"

# CURVE encryption and authentication for both sockets (keys from `edge keygen`):
# curve_secret_key = "/etc/edge/keys/server.key_secret"
# curve_authorized_clients = "/etc/edge/keys/authorized"
"""


@dataclass(frozen=True)
class Installed:
    unit: Path
    config: Path
    config_written: bool


def render_unit(
    exec_start: str = DEFAULT_EXEC, config: str = DEFAULT_CONFIG, user: str = DEFAULT_USER
) -> str:
    return UNIT_TEMPLATE.format(exec_start=exec_start, config=config, user=user)


def default_exec() -> str:
    """The ``edge`` next to this interpreter (the venv it is installed in), if there is one."""
    candidate = Path(sys.executable).parent / "edge"
    if candidate.is_file():
        return str(candidate)
    found = shutil.which("edge")
    return found or DEFAULT_EXEC


def install(
    root: Path, *, exec_start: str, user: str = DEFAULT_USER, force: bool = False
) -> Installed:
    """Write the unit and, unless one exists (or ``force``), the example config under ``root``.

    An existing config is never overwritten without ``force``: it is the plant's.
    """
    unit = root / "etc/systemd/system/edge.service"
    config = root / DEFAULT_CONFIG.lstrip("/")
    unit.parent.mkdir(parents=True, exist_ok=True)
    unit.write_text(render_unit(exec_start, DEFAULT_CONFIG, user))
    written = force or not config.exists()
    if written:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(EXAMPLE_CONFIG)
    return Installed(unit, config, written)
