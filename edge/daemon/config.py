"""The daemon's one validated configuration, from a TOML file and command-line flags.

Flags override the file; every key is checked here, before anything starts, and a bad value
gets an error that names the key, the file and the reason.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from edge import protocol
from edge.daemon.cpu import CpuScheduling
from edge.protocol.endpoints import check_endpoint
from edge.settings import ConfigError as ConfigError  # raised by load_config
from edge.settings import load_validated
from edge.vision.backends.auto import BackendName
from edge.vision.backends.openvino import OpenVinoOptions, Precision


def shipped_models() -> Path:
    """The reference model repository installed with the package (models/ in the source tree)."""
    return Path(str(importlib.resources.files("edge.reference_models")))


def _state_directory() -> Path | None:
    """systemd's StateDirectory= (the unit sets it) gives the daemon a place that survives."""
    value = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(value) if value else None


def _cache_directory() -> Path | None:
    """systemd's CacheDirectory= (the unit sets it): OpenVINO's compiled models live there."""
    value = os.environ.get("CACHE_DIRECTORY", "").split(":")[0]
    return Path(value) / "openvino" if value else None


def _endpoint(value: str, *, bind: bool) -> str:
    return check_endpoint(value, bind=bind)


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    # -- sockets --
    sources: list[str] = Field(default_factory=list, description="camera endpoints to connect to")
    bind_sources: list[str] = Field(
        default_factory=list, description="endpoints to bind for cameras that connect"
    )
    publish: str = "tcp://127.0.0.1:5556"
    # ZeroMQ's buffers are what bounds memory before the work queue: per camera connection at
    # most rcvhwm frames of at most max_message_bytes each (200 raw 256x1600 strips: 82 MB).
    rcvhwm: int = Field(200, gt=0, description="frames ZeroMQ buffers per camera before it drops")
    sndhwm: int = Field(
        10000, gt=0, description="events ZeroMQ buffers per subscriber before that one loses some"
    )
    max_message_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="a camera sending a bigger message is disconnected"
    )
    # -- security (ZeroMQ CURVE; both or neither) --
    curve_secret_key: Path | None = Field(
        None, description="the daemon's secret certificate (from `edge keygen`); turns CURVE on"
    )
    curve_authorized_clients: Path | None = Field(
        None, description="folder of public certificates of cameras and subscribers allowed in"
    )
    # -- models and inference --
    models: Path = Field(default_factory=shipped_models)
    backend: BackendName = "onnxruntime"
    engines: Path | None = Field(None, description="TensorRT engine folder (edge build --out)")
    rebuild_stale: bool = Field(
        False, description="rebuild a missing or stale TensorRT engine instead of refusing"
    )
    workers: int = Field(
        0,
        ge=0,
        le=64,
        description="inference workers, each with its own copy of the models; 0 = auto "
        "(CPU: one per core, up to 4; GPU: 1)",
    )
    threads: int = Field(
        0, ge=0, description="ONNX Runtime intra-op threads per worker; 0 = the cores / workers"
    )
    cpu_scheduling: CpuScheduling = Field(
        "batch",
        description="the Linux scheduling policy of the daemon's threads and ZeroMQ's: batch "
        "(a thread woken by a hand-off does not preempt the one that woke it: a third to half "
        "fewer context switches per strip) or inherit (as started: systemd's "
        "CPUSchedulingPolicy=)",
    )
    openvino_device: str = Field(
        "CPU",
        min_length=1,
        description="OpenVINO's device for --backend openvino or auto: CPU, GPU, GPU.1, NPU",
    )
    openvino_precision: Precision = Field(
        "auto",
        description="OpenVINO's inference precision: f32, bf16, f16, or auto (the device's "
        "default: bf16 on CPUs with AMX or AVX-512 BF16)",
    )
    openvino_cache: Path | None = Field(
        default_factory=_cache_directory,
        description="where OpenVINO keeps compiled models across starts (default: "
        "$CACHE_DIRECTORY/openvino, set by systemd's CacheDirectory=; off if unset)",
    )
    check_images: Path | None = Field(
        None,
        description="folder of recorded strips (PNG/JPEG) that --backend auto checks OpenVINO "
        "against FP32 ONNX Runtime on (default: synthetic strips)",
    )
    max_batch: int = Field(32, gt=0, le=1024, description="tiles per model batch")
    max_wait_ms: float = Field(
        5.0, ge=0, description="how long a partial batch waits for more strips"
    )
    publish_crops: bool = Field(
        False,
        description="each defect of a result carries a JPEG crop of the frame about its largest "
        "component (at most 256 x 256 px and 32 KiB), for edge store and edge report",
    )
    max_latency_ms: float | None = Field(
        None,
        description="a strip still waiting for inference this long after receipt is dropped "
        "(reason deadline) instead of inferred; off if unset",
    )
    # -- what the daemon accepts: checked before any frame is decoded or any table grows --
    max_frame_pixels: int = Field(
        4 * 256 * 1600,
        gt=0,
        le=protocol.MAX_PIXELS,
        description="a frame with more pixels is rejected before decoding (default: 4 strips)",
    )
    max_frame_height: int = Field(1024, gt=0, description="a taller frame is rejected")
    max_frame_width: int = Field(6400, gt=0, description="a wider frame is rejected")
    max_cameras: int = Field(
        64,
        gt=0,
        le=4096,
        description="camera ids the daemon keeps counters for; frames from more are rejected",
    )
    # -- load shedding and lifecycle --
    queue_size: int = Field(16, gt=0, description="strips waiting for inference")
    overload: Literal["drop-oldest", "block"] = "drop-oldest"
    status_interval_s: float = Field(1.0, gt=0)
    drain_timeout_s: float = Field(10.0, gt=0)
    stall_timeout_s: float = Field(
        10.0, gt=0, description="an inference worker silent this long: not ready, no watchdog ping"
    )
    pid_file: Path | None = Field(None, description="file to write the daemon's pid to")
    state_dir: Path | None = Field(
        default_factory=_state_directory,
        description="where the last seq of each camera is kept across restarts "
        "(default: $STATE_DIRECTORY, set by systemd's StateDirectory=; off if unset)",
    )
    state_interval_s: float = Field(
        1.0, gt=0, description="how often the last seqs are written to state_dir"
    )
    # -- observability --
    metrics: str | None = Field(
        None, description="HOST:PORT for /metrics, /healthz and /readyz over HTTP; off if unset"
    )
    daemon_id: str = Field(default_factory=socket.gethostname, min_length=1)
    # -- logging --
    log_format: Literal["auto", "json", "console"] = "auto"
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("sources", "bind_sources")
    @classmethod
    def _endpoints(cls, values: list[str], info: ValidationInfo) -> list[str]:
        return [_endpoint(v, bind=info.field_name == "bind_sources") for v in values]

    @field_validator("publish")
    @classmethod
    def _publish(cls, value: str) -> str:
        return _endpoint(value, bind=True)

    @field_validator("metrics")
    @classmethod
    def _metrics(cls, value: str | None) -> str | None:
        if value is not None:
            parse_host_port(value)
        return value

    @field_validator("curve_secret_key")
    @classmethod
    def _secret_key(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a file (write one with `edge keygen DIR`)")
        return value

    @field_validator("curve_authorized_clients")
    @classmethod
    def _authorized(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a folder of public .key certificates")
        return value

    @field_validator("max_latency_ms")
    @classmethod
    def _max_latency(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is None:
            return value
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(
                f"must be a number of ms more than 0 (leave it unset for no deadline), got {value}"
            )
        wait = info.data.get("max_wait_ms")
        if wait is not None and value <= wait:
            raise ValueError(
                f"{value} ms must be more than max_wait_ms ({wait} ms): a partial batch would "
                "wait for more strips past the deadline of the strips it holds"
            )
        return value

    @field_validator("check_images")
    @classmethod
    def _check_images(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_dir():
            raise ValueError(f"{str(value)!r} is not a folder of recorded strips")
        return value

    @field_validator("models")
    @classmethod
    def _models_dir(cls, value: Path) -> Path:
        if not value.is_dir():
            raise ValueError(f"model repository {str(value)!r} is not a folder")
        return value

    @model_validator(mode="after")
    def _some_source(self) -> Config:
        if not self.sources and not self.bind_sources:
            raise ValueError(
                "no cameras: give at least one source (--source) or bind_sources (--bind-source)"
            )
        if (self.curve_secret_key is None) != (self.curve_authorized_clients is None):
            raise ValueError(
                "CURVE needs both curve_secret_key and curve_authorized_clients, or neither"
            )
        return self

    @property
    def openvino(self) -> OpenVinoOptions:
        """How the OpenVINO backend compiles the models (the streams follow the workers)."""
        return OpenVinoOptions(
            device=self.openvino_device,
            precision=self.openvino_precision,
            cache_dir=self.openvino_cache,
        )

    @property
    def metrics_address(self) -> tuple[str, int] | None:
        return None if self.metrics is None else parse_host_port(self.metrics)


def parse_host_port(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:9100`` for IPv6) -> (host, port); port 0 picks a free one."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{value!r} is not HOST:PORT, e.g. 127.0.0.1:9100")
    return host.strip("[]"), int(port)


_PATH_KEYS = (
    "models",
    "engines",
    "openvino_cache",
    "check_images",
    "curve_secret_key",
    "curve_authorized_clients",
    "pid_file",
    "state_dir",
)


def load_config(path: Path | None = None, **overrides: Any) -> Config:
    """Read ``path`` (TOML) if given, apply non-None overrides, validate."""
    return load_validated(Config, path, _PATH_KEYS, overrides)
