"""``edge bridge mqtt``: every daemon event as JSON on an MQTT broker (paho-mqtt 2).

Topics: the template (default ``edge/{daemon}/{camera}/{kind}``) per event; the daemon's
``status`` retained; the bridge's own ``edge/bridge/<client_id>/online`` ("online" retained on
connect, "offline" as its last will and at a clean stop) and ``.../dropped`` (retained JSON
totals of what it could not deliver, published again whenever the broker is back).

While the broker is away paho's own queue holds QoS 1/2 events, and sends them once it is back
(paho reconnects with the backoff set here, and resends what was in flight). That queue holds
at most ``buffer`` messages the broker has not acknowledged, in flight ones included; past
that, new events are dropped (the newest: what was held stays in order) and counted. A status is state, not an event: only the latest is kept while the
broker is away. QoS 0 events have no buffer: while disconnected they are dropped and counted.
``take`` never waits on the broker, so the daemon's events never back up behind it.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import structlog

from edge.line.bridges.mqtt_json import (
    DAEMON_CAMERA,
    DEFAULT_TOPIC,
    BrokerUrl,
    check_template,
    event_json,
    render_topic,
)
from edge.protocol import STATUS_TOPIC_PREFIX

log = structlog.get_logger("edge.bridge")

DEFAULT_BUFFER = 10_000
STATS_INTERVAL_S = 1.0  # the dropped totals are published at most this often while they change
HOUSEKEEPING_S = 0.2


def default_client_id() -> str:
    return f"edge-bridge-{socket.gethostname()}"


@dataclass(frozen=True)
class MqttOptions:
    broker: BrokerUrl
    topic: str = DEFAULT_TOPIC
    qos: int = 1
    client_id: str = field(default_factory=default_client_id)
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    buffer: int = DEFAULT_BUFFER
    masks: bool = True
    daemon: str = "edge"  # {daemon} until the first status names it
    reconnect_min_s: float = 1.0
    reconnect_max_s: float = 30.0
    keepalive_s: int = 30

    def __post_init__(self) -> None:
        check_template(self.topic)
        if self.qos not in (0, 1, 2):
            raise ValueError(f"QoS must be 0, 1 or 2, got {self.qos}")
        if self.buffer < 1:
            raise ValueError(f"the buffer must hold at least 1 message, got {self.buffer}")
        if not self.client_id or any(c in self.client_id for c in "/+#\0"):
            raise ValueError(f"client id {self.client_id!r} must be non-empty, without / + # NUL")
        if not 0 < self.reconnect_min_s <= self.reconnect_max_s:
            raise ValueError("reconnect delays need 0 < min <= max")
        if self.password is not None and self.username is None:
            raise ValueError("a password needs a username (--username)")
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("a TLS client key needs its certificate (--tls-cert)")
        if not self.broker.tls and (self.tls_ca or self.tls_cert):
            raise ValueError(f"TLS options need an mqtts:// broker URL, not {self.broker}")
        for path in (self.tls_ca, self.tls_cert, self.tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {path} does not exist")

    @property
    def bridge_topic(self) -> str:
        return f"edge/bridge/{self.client_id}"


class MqttSink:
    """An EventSink that publishes to MQTT: ``start()``, hand it to an EventSubscriber, ``stop()``."""

    def __init__(self, options: MqttOptions) -> None:
        self.options = options
        self.online_topic = f"{options.bridge_topic}/online"
        self.dropped_topic = f"{options.bridge_topic}/dropped"
        self._daemon = options.daemon
        self._lock = threading.Lock()
        self.dropped: Counter[str] = Counter()  # reason -> events not delivered
        self.invalid_count = 0
        self.coalesced = 0  # statuses replaced by a newer one while the broker was away
        self.accepted = 0  # events handed to paho (sent or in its buffer)
        self.connects = 0
        self.refused = 0  # connections the broker refused (bad credentials, say)
        self._held: dict[str, tuple[bytes, bool]] = {}  # topic -> latest (payload, retain)
        self._stats_sent: tuple[Any, ...] | None = None
        self._stats_at = 0.0
        self._unacked: deque[mqtt.MQTTMessageInfo] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._housekeeper = threading.Thread(
            target=self._housekeep, name="mqtt-bridge", daemon=True
        )
        self.client = self._client()

    def _client(self) -> mqtt.Client:
        opts = self.options
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=opts.client_id)
        client.max_queued_messages_set(opts.buffer)
        client.reconnect_delay_set(opts.reconnect_min_s, opts.reconnect_max_s)  # type: ignore[arg-type]
        client.will_set(self.online_topic, b"offline", qos=1, retain=True)
        if opts.username is not None:
            client.username_pw_set(opts.username, opts.password)
        if opts.broker.tls:
            client.tls_set(
                ca_certs=str(opts.tls_ca) if opts.tls_ca else None,
                certfile=str(opts.tls_cert) if opts.tls_cert else None,
                keyfile=str(opts.tls_key) if opts.tls_key else None,
            )
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        return client

    # -- life cycle ---------------------------------------------------------------------------

    def start(self) -> MqttSink:
        broker = self.options.broker
        self.client.connect_async(broker.host, broker.port, keepalive=self.options.keepalive_s)
        self.client.loop_start()  # connects, and reconnects with backoff, on its own thread
        self._housekeeper.start()
        log.info("mqtt bridge connecting", broker=str(broker), client_id=self.options.client_id)
        return self

    def stop(self, timeout_s: float = 5.0) -> int:
        """Flush for at most ``timeout_s``, publish "offline", disconnect (no will then).

        Returns how many accepted events were still not acknowledged by the broker (lost)."""
        self._stop.set()
        self._wake.set()
        if self._housekeeper.is_alive():
            self._housekeeper.join(timeout_s)
        deadline = time.monotonic() + timeout_s
        if self.client.is_connected():
            self._flush_held()
            self._publish(self.dropped_topic, self._stats_json(), retain=True)
            offline = self._publish(self.online_topic, b"offline", retain=True)
            if self.options.qos > 0:
                self._unacked.append(offline)
        while self._prune() and time.monotonic() < deadline and self.client.is_connected():
            time.sleep(0.02)
        unsent = self._prune()
        if unsent:
            log.warning(
                "mqtt bridge stopped with messages the broker never acknowledged", lost=unsent
            )
        self.client.disconnect()
        self.client.loop_stop()
        log.info("mqtt bridge stopped", **self.stats())
        return unsent

    # -- paho callbacks (its network thread) --------------------------------------------------

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if reason.is_failure:
            self.refused += 1
            log.error(
                "mqtt broker refused the connection",
                broker=str(self.options.broker),
                reason=str(reason),
                throttle=True,
            )
            return
        with self._lock:
            self.connects += 1
            self._held[self.online_topic] = (b"online", True)
            self._stats_sent = None  # publish the totals again: the broker may have lost them
        log.info(
            "mqtt broker connected",
            broker=str(self.options.broker),
            buffered=len(self._unacked),
            **self.stats(),
        )
        self._wake.set()

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        if self._stop.is_set():
            return
        log.warning(
            "mqtt broker connection lost; buffering and reconnecting",
            broker=str(self.options.broker),
            reason=str(reason),
            buffer=self.options.buffer,
            throttle=True,
        )

    # -- the EventSink side (the subscriber's thread) -----------------------------------------

    def take(self, topic: str, body: dict[str, Any]) -> None:
        kind = body["kind"]
        if not isinstance(kind, str):
            raise TypeError(f"kind must be a string, got {type(kind).__name__}")
        if topic.startswith(STATUS_TOPIC_PREFIX):
            self._daemon = topic[len(STATUS_TOPIC_PREFIX) :] or self._daemon
            camera = DAEMON_CAMERA
        else:
            camera = body.get("camera") or topic.partition("/")[2]
        mqtt_topic = render_topic(self.options.topic, daemon=self._daemon, camera=camera, kind=kind)
        payload = event_json(body, masks=self.options.masks)
        if kind == "status":
            self._status(mqtt_topic, payload)
        else:
            self._event(mqtt_topic, payload, kind)
        self._prune()

    def invalid(self, reason: str) -> None:
        with self._lock:
            self.invalid_count += 1

    def lost_on_the_way(self, count: int, reason: str) -> None:
        """Events lost before they reached the bridge (the subscriber core's TransitLoss):
        counted with the others, so ``.../dropped`` tells the whole loss."""
        with self._lock:
            self.dropped["lost_before_bridge"] += count
        self._wake.set()

    def _event(self, topic: str, payload: bytes, kind: str) -> None:
        info = self._publish(topic, payload, retain=False)
        if info.rc == mqtt.MQTT_ERR_SUCCESS:
            with self._lock:
                self.accepted += 1
            if self.options.qos > 0:  # QoS 0 is never acknowledged: nothing to wait for
                self._unacked.append(info)
            return
        reason = {
            mqtt.MQTT_ERR_QUEUE_SIZE: "buffer_full",
            mqtt.MQTT_ERR_NO_CONN: "not_connected",
        }.get(info.rc, "error")
        with self._lock:
            self.dropped[reason] += 1
            total = self.dropped.total()
        log.warning(
            "mqtt bridge dropped an event",
            reason=reason,
            kind=kind,
            topic=topic,
            dropped=total,
            throttle=True,
        )

    def _status(self, topic: str, payload: bytes) -> None:
        with self._lock:
            if topic in self._held:
                self.coalesced += 1
            self._held[topic] = (payload, True)
        if self.client.is_connected():
            self._wake.set()

    def _publish(self, topic: str, payload: bytes, *, retain: bool) -> mqtt.MQTTMessageInfo:
        """paho's publish; rc SUCCESS once paho holds the message (sent, or queued for later)."""
        try:
            info = self.client.publish(topic, payload, qos=self.options.qos, retain=retain)
        except (OSError, RuntimeError) as err:  # e.g. paho's wake-up socket closed at shutdown
            log.warning("mqtt publish failed", topic=topic, error=repr(err), throttle=True)
            info = mqtt.MQTTMessageInfo(0)
            info.rc = mqtt.MQTT_ERR_UNKNOWN
            return info
        if info.rc == mqtt.MQTT_ERR_NO_CONN and self.options.qos > 0:
            # Queued in paho's buffer, sent once the broker is back. The info keeps rc NO_CONN
            # even then, and is_published() would raise on it: it is a success here.
            info.rc = mqtt.MQTT_ERR_SUCCESS
        return info

    def _prune(self) -> int:
        """Forget acknowledged messages at the front; how many are still unacknowledged."""
        unacked = self._unacked
        while unacked and unacked[0].is_published():
            unacked.popleft()
        return len(unacked)

    # -- what waits for the broker: statuses, online, the dropped totals ---------------------

    def _housekeep(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(HOUSEKEEPING_S)
            self._wake.clear()
            if self._stop.is_set() or not self.client.is_connected():
                continue
            self._flush_held()
            with self._lock:
                key = self._stats_key()
                due = (
                    key != self._stats_sent
                    and time.monotonic() - self._stats_at >= STATS_INTERVAL_S
                )
            if due or self._stats_sent is None:
                info = self._publish(self.dropped_topic, self._stats_json(), retain=True)
                if info.rc == mqtt.MQTT_ERR_SUCCESS:
                    with self._lock:
                        self._stats_sent, self._stats_at = key, time.monotonic()

    def _flush_held(self) -> None:
        with self._lock:
            held = list(self._held.items())
        for topic, (payload, retain) in held:
            info = self._publish(topic, payload, retain=retain)
            if info.rc != mqtt.MQTT_ERR_SUCCESS:
                continue  # the buffer is full: try again at the next round
            with self._lock:
                if self._held.get(topic) == (payload, retain):
                    del self._held[topic]

    def _stats_key(self) -> tuple[Any, ...]:
        return (tuple(sorted(self.dropped.items())), self.invalid_count, self.coalesced)

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "dropped": self.dropped.total(),
                "reasons": dict(self.dropped),
                "accepted": self.accepted,
                "invalid": self.invalid_count,
                "status_coalesced": self.coalesced,
                "connects": self.connects,
            }

    def _stats_json(self) -> bytes:
        return json.dumps({"client_id": self.options.client_id, **self.stats()}).encode()
