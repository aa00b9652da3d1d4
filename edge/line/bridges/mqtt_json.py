"""The MQTT bridge's pure parts: the broker URL, the topic template, an event as JSON.

No paho here: this is what start-up checks and the tests use without a broker.
"""

from __future__ import annotations

import base64
import json
import math
import string
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_TOPIC = "edge/{daemon}/{camera}/{kind}"
PLACEHOLDERS = ("daemon", "camera", "kind")
# {camera} for what the daemon says about itself (topic status/<daemon_id>): status,
# source_lost, source_restored. A leading underscore: no clash with a camera called "daemon".
DAEMON_CAMERA = "_daemon"
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
MAX_TOPIC_BYTES = 65535  # MQTT's limit on a topic name


@dataclass(frozen=True)
class BrokerUrl:
    host: str
    port: int
    tls: bool

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'mqtts' if self.tls else 'mqtt'}://{host}:{self.port}"


def parse_broker_url(url: str) -> BrokerUrl:
    """``mqtt://host[:port]`` (default 1883) or ``mqtts://host[:port]`` (TLS, default 8883).

    Raises ValueError naming what is wrong: the scheme, a missing host, a bad port, or parts
    a broker address has no use for (a path, a query, credentials: use --username and
    EDGE_MQTT_PASSWORD, so the password is not on the command line).
    """
    if not isinstance(url, str) or not url.strip():
        raise ValueError("broker URL is empty: expected mqtt://host[:port] or mqtts://host[:port]")
    if "://" not in url:
        raise ValueError(
            f"broker URL {url!r} has no scheme: expected mqtt://{url} or mqtts://{url}"
        )
    try:
        parts = urlsplit(url)
    except ValueError as err:  # e.g. an unclosed IPv6 bracket
        raise ValueError(f"broker URL {url!r} is malformed: {err}") from None
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError(
            f"broker URL {url!r} has scheme {parts.scheme!r}: use mqtt:// (plain TCP) or "
            "mqtts:// (TLS)"
        )
    if parts.username is not None or parts.password is not None:
        raise ValueError(
            f"broker URL {url!r} holds credentials: pass --username, and the password in "
            "EDGE_MQTT_PASSWORD (or --password), not in the URL"
        )
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError(
            f"broker URL {url!r} has a path, query or fragment: expected {scheme}://host[:port]"
        )
    host = parts.hostname
    if not host:
        raise ValueError(f"broker URL {url!r} has no host: expected {scheme}://host[:port]")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(
            f"broker URL {url!r} has a bad port: expected a number from 1 to 65535"
        ) from None
    if port is None:
        if parts.netloc.endswith(":"):
            raise ValueError(f"broker URL {url!r} has an empty port")
        port = DEFAULT_PORTS[scheme]
    if not 1 <= port <= 65535:
        raise ValueError(f"broker URL {url!r} has port {port}: expected 1 to 65535")
    return BrokerUrl(host, port, scheme == "mqtts")


def check_template(template: str) -> str:
    """The topic template, if usable; else ValueError naming the problem.

    Placeholders: {daemon}, {camera}, {kind}. No MQTT wildcards (+ #): one publishes to a topic
    name, never a filter. Not starting with $ (the broker's own topics, $SYS).
    """
    if not template:
        raise ValueError("topic template is empty")
    if "\0" in template:
        raise ValueError("topic template holds a NUL character")
    if template.startswith("$"):
        raise ValueError(
            f"topic template {template!r} starts with '$': those topics are the broker's"
        )
    try:
        fields = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"topic template {template!r} is malformed: {err}") from None
    allowed = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
    for literal, name, spec, conversion in fields:
        if "+" in literal or "#" in literal:
            raise ValueError(
                f"topic template {template!r} holds an MQTT wildcard (+ or #): a topic to "
                "publish on must not"
            )
        if name is None:
            continue
        if name not in PLACEHOLDERS:
            shown = "{" + name + "}" if name else "{}"
            raise ValueError(
                f"topic template {template!r} has unknown placeholder {shown}: use {allowed}"
            )
        if spec or conversion:
            raise ValueError(
                f"topic template {template!r}: placeholder {{{name}}} takes no format "
                "spec or conversion"
            )
    return template


def topic_level(value: Any) -> str:
    """A value made safe as (part of) a topic level: no '/', '+', '#' or NUL; never empty."""
    text = str(value)
    for char in "/+#\0":
        text = text.replace(char, "_")
    return text or "_"


def render_topic(template: str, *, daemon: str, camera: str, kind: str) -> str:
    """The topic for one event (the template checked by check_template)."""
    topic = template.format(
        daemon=topic_level(daemon), camera=topic_level(camera), kind=topic_level(kind)
    )
    if topic.startswith("$"):
        topic = "_" + topic
    if len(topic.encode()) > MAX_TOPIC_BYTES:
        raise ValueError(f"topic is longer than {MAX_TOPIC_BYTES} bytes")
    return topic


def jsonable(value: Any) -> Any:
    """``value`` (a decoded msgpack event) as what json can write: bytes as base64 strings,
    tuples as lists, map keys as strings, NaN and infinities as null."""
    if isinstance(value, str | bool | int) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {_key(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    return str(value)  # e.g. a msgpack ExtType: readable rather than a crash


def _key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if isinstance(key, bytes):
        return key.decode("utf-8", "replace")
    return str(jsonable(key))


def without_masks(body: dict[str, Any]) -> dict[str, Any]:
    """A copy of the event without each defect's ``mask_rle`` and its crop's ``jpeg``."""
    defects = body.get("defects")
    if not isinstance(defects, list):
        return body
    stripped = []
    for defect in defects:
        if isinstance(defect, dict):
            defect = {k: v for k, v in defect.items() if k != "mask_rle"}
            crop = defect.get("crop")
            if isinstance(crop, dict):
                defect["crop"] = {k: v for k, v in crop.items() if k != "jpeg"}
        stripped.append(defect)
    return {**body, "defects": stripped}


def event_json(body: dict[str, Any], *, masks: bool = True) -> bytes:
    """One event as compact UTF-8 JSON: the v1 map's keys and values, bytes as base64."""
    if not masks:
        body = without_masks(body)
    return json.dumps(jsonable(body), separators=(",", ":"), allow_nan=False).encode()
