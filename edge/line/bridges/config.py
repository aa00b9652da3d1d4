"""The bridges' one validated configuration: a TOML file, then command-line flags over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.protocol.endpoints import check_endpoint
from edge.settings import load_validated

_PATH_KEYS = ("curve_server_key", "curve_client_key")


class _SubscriberConfig(BaseModel):
    """What every subscriber of the daemon's events is configured with: where, and CURVE."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field("tcp://127.0.0.1:5556", description="the daemon's --publish endpoint")
    curve_server_key: Path | None = None
    curve_client_key: Path | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_endpoint(value, bind=False)

    @model_validator(mode="after")
    def _curve_pair(self) -> _SubscriberConfig:
        if (self.curve_server_key is None) != (self.curve_client_key is None):
            raise ValueError(
                "CURVE needs both curve_server_key and curve_client_key (in the file or as "
                "--curve-server-key and --curve-client-key), or neither"
            )
        return self

    @property
    def curve(self) -> tuple[Path, Path] | None:
        if self.curve_server_key is None or self.curve_client_key is None:
            return None
        return self.curve_server_key, self.curve_client_key


class BridgeConfig(_SubscriberConfig):
    """``edge bridge modbus|opcua``'s options."""

    cameras: list[str] = Field(
        default_factory=list,
        description="camera ids in slot order; empty: slots in the order cameras are first seen",
    )
    max_cameras: int = Field(16, ge=1, le=64, description="camera slots served")
    hold_s: float = Field(
        0.0, ge=0, description="0: latch until acknowledged; else also clear it this long after"
    )
    stale_s: float = Field(3.0, gt=0, description="no daemon status this long: daemon_ok off")
    camera_stale_s: float = Field(
        5.0, gt=0, description="no event about a camera this long: its camera_ok off"
    )
    listen: str = Field("127.0.0.1:5020", description="Modbus TCP host:port to listen on")
    endpoint: str = Field("opc.tcp://127.0.0.1:4840/edge", description="OPC UA endpoint URL")

    @field_validator("listen")
    @classmethod
    def _listen(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not host:port, e.g. 127.0.0.1:5020 or 0.0.0.0:502")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str) -> str:
        if not value.startswith("opc.tcp://"):
            raise ValueError(f"{value!r} is not an OPC UA URL like opc.tcp://127.0.0.1:4840/edge")
        return value

    @field_validator("cameras")
    @classmethod
    def _cameras(cls, value: list[str]) -> list[str]:
        if any(not c for c in value):
            raise ValueError("camera ids must be non-empty")
        if len(set(value)) != len(value):
            raise ValueError(f"camera ids must be unique, got {value}")
        return value

    @model_validator(mode="after")
    def _fits(self) -> BridgeConfig:
        if len(self.cameras) > self.max_cameras:
            raise ValueError(f"{len(self.cameras)} cameras but max_cameras is {self.max_cameras}")
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)


def load_bridge_config(path: Path | None = None, **overrides: Any) -> BridgeConfig:
    """Read ``path`` (TOML) if given, apply non-None overrides, validate."""
    return load_validated(BridgeConfig, path, _PATH_KEYS, overrides)


_MQTT_PATH_KEYS = (*_PATH_KEYS, "tls_ca", "tls_cert", "tls_key")


class MqttBridgeConfig(_SubscriberConfig):
    """``edge bridge mqtt``'s options: a TOML file (``-c``), then flags over it."""

    broker: str = Field("mqtt://127.0.0.1:1883", description="mqtt://host[:port] or mqtts://")
    topic: str = Field("edge/{daemon}/{camera}/{kind}", description="the topic template")
    qos: int = Field(1, ge=0, le=2, description="MQTT QoS of every message")
    client_id: str | None = Field(None, description="default edge-bridge-<host name>")
    username: str | None = None
    # In the file (readable by the service's user only), or EDGE_MQTT_PASSWORD: not a flag.
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    buffer: int = Field(10_000, ge=1, description="unacknowledged QoS 1/2 messages, at most")
    masks: bool = Field(True, description="false: leave out mask_rle and crop jpeg")
    daemon: str = Field("edge", description="{daemon} until the first status names it")
    reconnect_min_s: float = Field(1.0, ge=0.01)
    reconnect_max_s: float = Field(30.0, ge=0.01)


def load_mqtt_config(path: Path | None = None, **overrides: Any) -> MqttBridgeConfig:
    """Read ``path`` (TOML) if given, apply non-None overrides, validate."""
    return load_validated(MqttBridgeConfig, path, _MQTT_PATH_KEYS, overrides)
