"""systemd units for the plant's subscribers: ``edge store``, ``edge bridge mqtt``, ``edge view``.

Each runs beside the daemon's ``edge.service`` and after it, but does not require it: a
subscriber reconnects on its own, so a daemon restart must not restart the store. The texts
live here so an installed package can write them (``edge install-service --plant``); the
copies in systemd/ are these rendered with the defaults, and a test keeps them the same.
"""

from __future__ import annotations

from pathlib import Path

from edge.tools.service import DEFAULT_EXEC, DEFAULT_USER, SANDBOX

MQTT_CONFIG = "/etc/edge/mqtt.toml"

_HEAD = """\
# {title}, beside the daemon (edge.service). Install: edge install-service --plant
# (docs/integration.md), then systemctl daemon-reload && systemctl enable --now {name}
[Unit]
Description={title}
Wants=network-online.target
After=network-online.target edge.service

[Service]
Type=simple
ExecStart={exec_start} {command}
Restart=on-failure
RestartSec=2
# SIGTERM: the subscriber stops, what it holds is written or counted, then it exits 0.
TimeoutStopSec=30
User={user}
Group={user}
Environment=PYTHONUNBUFFERED=1
"""

_HARDENING = (
    "NoNewPrivileges=yes\nProtectSystem=strict\nProtectHome=yes\nPrivateTmp=yes\n"
    "PrivateDevices=yes\n" + SANDBOX + "\n[Install]\nWantedBy=multi-user.target\n"
)

UNITS: dict[str, tuple[str, str, str]] = {
    # name: (title, the edge command and its options, what the unit adds)
    "edge-store": (
        "edge defect store",
        "store --source tcp://127.0.0.1:5556 --db sqlite:////var/lib/edge-store/defects.db "
        "--retention-days 90",
        "# The SQLite file: systemd creates /var/lib/edge-store, writable by the store alone.\n"
        "# For PostgreSQL, --db postgresql://edge@db-host/edge and no state directory.\n"
        "StateDirectory=edge-store\nStateDirectoryMode=0750\n",
    ),
    "edge-mqtt": (
        "edge MQTT bridge",
        f"bridge mqtt --config {MQTT_CONFIG}",
        f"# The broker, topics, TLS files and the password are in {MQTT_CONFIG}: keep it\n"
        "# readable by root and this user only (chmod 0640, group edge).\n",
    ),
    "edge-view": (
        "edge operator view",
        "view --source tcp://127.0.0.1:5556 --cameras tcp://cam1:5555 --listen 127.0.0.1:8080",
        "# Localhost unless told otherwise: --listen 0.0.0.0:8080 serves the cell's LAN (the page\n"
        "# is read-only). One --cameras per camera, for the strips' pixels.\n",
    ),
}

EXAMPLE_MQTT_CONFIG = """\
# /etc/edge/mqtt.toml: edge bridge mqtt's configuration (keys are its options with
# underscores; docs/integration.md). Relative paths are relative to this file.
source = "tcp://127.0.0.1:5556"
broker = "mqtt://127.0.0.1:1883"   # mqtts://broker:8883 for TLS, with tls_ca
topic = "edge/{daemon}/{camera}/{kind}"
qos = 1
buffer = 10000                     # unacknowledged messages held while the broker is away
masks = true                       # false: leave out mask_rle and crop jpeg
# username = "line7-edge"
# password = "..."                 # this file is then secret: chmod 0640
# tls_ca = "/etc/edge/keys/broker-ca.pem"
"""


def render_plant_unit(name: str, exec_start: str = DEFAULT_EXEC, user: str = DEFAULT_USER) -> str:
    title, command, extra = UNITS[name]
    head = _HEAD.format(title=title, name=name, exec_start=exec_start, command=command, user=user)
    return head + extra + _HARDENING


def install_plant(
    root: Path, *, exec_start: str, user: str = DEFAULT_USER, force: bool = False
) -> list[tuple[Path, bool]]:
    """Write the three units and, unless one exists (or ``force``), the example mqtt.toml.

    Returns each file with whether it was written (an existing mqtt.toml is the plant's).
    """
    written: list[tuple[Path, bool]] = []
    for name in UNITS:
        unit = root / f"etc/systemd/system/{name}.service"
        unit.parent.mkdir(parents=True, exist_ok=True)
        unit.write_text(render_plant_unit(name, exec_start, user))
        written.append((unit, True))
    config = root / MQTT_CONFIG.lstrip("/")
    fresh = force or not config.exists()
    if fresh:
        config.parent.mkdir(parents=True, exist_ok=True)
        config.write_text(EXAMPLE_MQTT_CONFIG)
        config.chmod(0o640)
    written.append((config, fresh))
    return written
