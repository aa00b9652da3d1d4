"""``edge bridge modbus|opcua``: serve the daemon's events to PLCs (needs the ``plc`` extra);
``edge bridge mqtt``: publish them to an MQTT broker (needs the ``mqtt`` extra)."""

from __future__ import annotations

import importlib.util
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from edge.cli.common import CurveClientKey, CurveServerKey, connect_endpoints, curve_pair, fail
from edge.daemon.config import ConfigError

bridge_app = typer.Typer(
    help="Serve the daemon's defect events to PLCs over Modbus TCP or OPC UA "
    "(needs the plc extra: pip install 'edge\\[plc]'; register map in docs/plc.md), "
    "or publish them to an MQTT broker (needs the mqtt extra).",
    no_args_is_help=True,
)

Source = Annotated[
    str | None,
    typer.Option(
        "--source",
        "-s",
        help="The daemon's publish endpoint (default tcp://127.0.0.1:5556).",
        callback=connect_endpoints,
    ),
]
Cameras = Annotated[
    list[str] | None,
    typer.Option(
        "--camera",
        help="Camera id; repeat in slot order (slot 0 first). Without: slots in the order "
        "cameras are first seen.",
    ),
]
ConfigFile = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML file with these options (underscored keys); flags win."
    ),
]
Hold = Annotated[
    float | None,
    typer.Option(
        "--hold",
        help="Seconds the defective latch holds after the last defect (default 0: until acknowledged).",
    ),
]
Stale = Annotated[
    float | None,
    typer.Option(
        "--stale", help="No daemon status for this many seconds: daemon_ok off (default 3)."
    ),
]
CameraStale = Annotated[
    float | None,
    typer.Option(
        "--camera-stale", help="No event about a camera this long: camera_ok off (default 5)."
    ),
]
MaxCameras = Annotated[int | None, typer.Option("--max-cameras", help="Camera slots (default 16).")]


def _need(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        raise fail(f"{module} is not installed: pip install 'edge[plc]'")


def _serve(kind: str, config: Path | None, settings: dict[str, Any]) -> None:
    from edge.line.bridges.config import load_bridge_config
    from edge.line.bridges.state import BridgeState
    from edge.line.bridges.subscriber import Subscriber
    from edge.logs import configure
    from edge.protocol.curve import SecurityError

    if config is None:
        # Only flags: the same check and message as every other client. With a file, one key
        # may come from it and the other from a flag, so the config's validation decides.
        curve_pair(settings["curve_server_key"], settings["curve_client_key"])
    configure()
    try:
        cfg = load_bridge_config(config, **settings)
    except ConfigError as err:
        raise fail(str(err)) from None
    state = BridgeState(
        cfg.cameras,
        max_cameras=cfg.max_cameras,
        hold_s=cfg.hold_s,
        stale_s=cfg.stale_s,
        camera_stale_s=cfg.camera_stale_s,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    bridge: Any
    if kind == "modbus":
        from edge.line.bridges import modbus

        host, port = cfg.host_port
        bridge, run, on_defect = modbus.ModbusBridge(state, host, port), modbus.run_forever, None
    else:
        from edge.line.bridges import opcua

        bridge = opcua.OpcUaBridge(state, cfg.endpoint)
        run, on_defect = opcua.run_forever, bridge.notify
    try:
        subscriber = Subscriber(cfg.source, state, on_defect=on_defect, curve=cfg.curve).start()
    except (ValueError, SecurityError) as err:
        raise fail(str(err)) from None
    where = cfg.listen if kind == "modbus" else cfg.endpoint
    typer.echo(f"edge bridge {kind}: {cfg.source} -> {where}", err=True)
    try:
        run(bridge, stop)
    except OSError as err:  # the listen address is taken or not ours
        raise fail(f"cannot serve on {where}: {err}") from None
    finally:
        subscriber.stop()


@bridge_app.command("modbus")
def modbus_command(
    source: Source = None,
    listen: Annotated[
        str | None,
        typer.Option(
            help="host:port to serve Modbus TCP on (default 127.0.0.1:5020); 0.0.0.0:502 for all"
        ),
    ] = None,
    camera: Cameras = None,
    config: ConfigFile = None,
    hold: Hold = None,
    stale: Stale = None,
    camera_stale: CameraStale = None,
    max_cameras: MaxCameras = None,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Modbus TCP server: per camera a block of holding registers and coils (docs/plc.md)."""
    _need("pymodbus")
    _serve(
        "modbus",
        config,
        {
            "source": source,
            "listen": listen,
            "cameras": camera,
            "hold_s": hold,
            "stale_s": stale,
            "camera_stale_s": camera_stale,
            "max_cameras": max_cameras,
            "curve_server_key": curve_server_key,
            "curve_client_key": curve_client_key,
        },
    )


@bridge_app.command("opcua")
def opcua_command(
    source: Source = None,
    endpoint: Annotated[
        str | None,
        typer.Option(help="OPC UA endpoint URL (default opc.tcp://127.0.0.1:4840/edge)."),
    ] = None,
    camera: Cameras = None,
    config: ConfigFile = None,
    hold: Hold = None,
    stale: Stale = None,
    camera_stale: CameraStale = None,
    max_cameras: MaxCameras = None,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """OPC UA server: a folder of typed variables per camera and a DefectEventType event."""
    _need("asyncua")
    _serve(
        "opcua",
        config,
        {
            "source": source,
            "endpoint": endpoint,
            "cameras": camera,
            "hold_s": hold,
            "stale_s": stale,
            "camera_stale_s": camera_stale,
            "max_cameras": max_cameras,
            "curve_server_key": curve_server_key,
            "curve_client_key": curve_client_key,
        },
    )


@bridge_app.command("mqtt")
def mqtt_command(
    source: Source = None,
    broker: Annotated[
        str | None,
        typer.Option(
            "--broker",
            "-b",
            help="mqtt://host[:port] (default port 1883) or mqtts:// (TLS, 8883). "
            "(default mqtt://127.0.0.1:1883)",
        ),
    ] = None,
    topic: Annotated[
        str | None,
        typer.Option(
            help="Topic template; placeholders {daemon}, {camera}, {kind}. "
            "(default edge/{daemon}/{camera}/{kind})"
        ),
    ] = None,
    qos: Annotated[
        int | None, typer.Option(min=0, max=2, help="MQTT QoS of every message (default 1).")
    ] = None,
    client_id: Annotated[
        str | None,
        typer.Option(
            help="MQTT client id, unique per broker (default edge-bridge-<host name>); also names "
            "the bridge's own topics edge/bridge/<client id>/online and .../dropped."
        ),
    ] = None,
    username: Annotated[str | None, typer.Option(help="Broker user name.")] = None,
    password: Annotated[
        str | None,
        typer.Option(
            envvar="EDGE_MQTT_PASSWORD",
            help="Broker password; better from EDGE_MQTT_PASSWORD or the config file (not "
            "visible in ps).",
        ),
    ] = None,
    tls_ca: Annotated[
        Path | None,
        typer.Option(help="mqtts://: CA certificate file (default: the system's CAs)."),
    ] = None,
    tls_cert: Annotated[
        Path | None, typer.Option(help="mqtts://: client certificate (PEM), for brokers that ask.")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option(help="mqtts://: the client certificate's key.")
    ] = None,
    buffer: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="QoS 1/2 messages the broker has not acknowledged yet, at most: in flight, or "
            "held while it is away. Past it new events are dropped and counted on "
            "edge/bridge/<client id>/dropped. (default 10000)",
        ),
    ] = None,
    no_masks: Annotated[
        bool,
        typer.Option("--no-masks", help="Leave out each defect's mask_rle and crop jpeg."),
    ] = False,
    daemon: Annotated[
        str | None,
        typer.Option(help="{daemon} until the daemon's first status names it (default edge)."),
    ] = None,
    reconnect_min: Annotated[
        float | None,
        typer.Option(min=0.01, help="First delay (s) before reconnecting; it doubles (default 1)."),
    ] = None,
    reconnect_max: Annotated[
        float | None,
        typer.Option(min=0.01, help="Longest delay (s) between reconnect attempts (default 30)."),
    ] = None,
    config: ConfigFile = None,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Publish every event as JSON to an MQTT broker (topics and payload: docs/integration.md)."""
    if importlib.util.find_spec("paho") is None or importlib.util.find_spec("paho.mqtt") is None:
        raise fail("paho-mqtt is not installed: pip install 'edge[mqtt]'")
    from edge.line.bridges.config import load_mqtt_config
    from edge.line.bridges.mqtt import MqttOptions, MqttSink, default_client_id
    from edge.line.bridges.mqtt_json import parse_broker_url
    from edge.line.bridges.subscriber import EventSubscriber
    from edge.logs import configure
    from edge.protocol.curve import SecurityError

    if config is None:
        curve_pair(curve_server_key, curve_client_key)  # the same message as every client
    try:
        cfg = load_mqtt_config(
            config, source=source, broker=broker, topic=topic, qos=qos, client_id=client_id,
            username=username, password=password, tls_ca=tls_ca, tls_cert=tls_cert,
            tls_key=tls_key, buffer=buffer, masks=False if no_masks else None, daemon=daemon,
            reconnect_min_s=reconnect_min, reconnect_max_s=reconnect_max,
            curve_server_key=curve_server_key, curve_client_key=curve_client_key,
        )  # fmt: skip
        options = MqttOptions(
            broker=parse_broker_url(cfg.broker),
            topic=cfg.topic,
            qos=cfg.qos,
            client_id=cfg.client_id or default_client_id(),
            username=cfg.username,
            password=cfg.password,
            tls_ca=cfg.tls_ca,
            tls_cert=cfg.tls_cert,
            tls_key=cfg.tls_key,
            buffer=cfg.buffer,
            masks=cfg.masks,
            daemon=cfg.daemon,
            reconnect_min_s=cfg.reconnect_min_s,
            reconnect_max_s=cfg.reconnect_max_s,
        )
    except (ConfigError, ValueError) as err:
        raise fail(str(err)) from None
    configure()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        sink = MqttSink(options)
    except (ValueError, OSError) as err:  # e.g. an unreadable TLS file
        raise fail(f"cannot set up the MQTT client: {err}") from None
    if options.password is not None and not options.broker.tls:
        typer.echo("warning: the password goes to the broker unencrypted (use mqtts://)", err=True)
    sink.start()
    try:
        subscriber = EventSubscriber(
            cfg.source, sink, curve=cfg.curve, name="edge bridge mqtt"
        ).start()
    except (ValueError, SecurityError) as err:
        sink.stop(timeout_s=1.0)
        raise fail(str(err)) from None
    typer.echo(f"edge bridge mqtt: {subscriber.source} -> {options.broker}", err=True)
    try:
        while not stop.wait(0.5):
            pass
    finally:
        subscriber.stop()
        sink.stop()
