"""The bridges' one validated configuration: a TOML file, then command-line flags over it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from edge.protocol.endpoints import check_endpoint
from edge.settings import load_validated

_PATH_KEYS = ("curve_server_key", "curve_client_key")


class BridgeConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    source: str = Field("tcp://127.0.0.1:5556", description="the daemon's --publish endpoint")
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
    curve_server_key: Path | None = None
    curve_client_key: Path | None = None

    @field_validator("source")
    @classmethod
    def _source(cls, value: str) -> str:
        return check_endpoint(value, bind=False)

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
        if (self.curve_server_key is None) != (self.curve_client_key is None):
            raise ValueError(
                "CURVE needs both curve_server_key and curve_client_key (in the file or as "
                "--curve-server-key and --curve-client-key), or neither"
            )
        return self

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def curve(self) -> tuple[Path, Path] | None:
        if self.curve_server_key is None or self.curve_client_key is None:
            return None
        return self.curve_server_key, self.curve_client_key


def load_bridge_config(path: Path | None = None, **overrides: Any) -> BridgeConfig:
    """Read ``path`` (TOML) if given, apply non-None overrides, validate."""
    return load_validated(BridgeConfig, path, _PATH_KEYS, overrides)
