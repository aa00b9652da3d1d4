"""The engine folder the build writes: its layout, the sidecar beside each plan, atomic writes.

An engine folder mirrors the model repository it was built from (Triton-style)::

    engines/
      timing.cache                      # TensorRT's tactic timings, reused by every build
      segmenter/config.toml             # copied from the model, so the folder reads like one
      segmenter/1/model.plan            # the serialized engine
      segmenter/1/model.plan.json       # its sidecar (below)
      segmenter/1/model.fp16.onnx       # TensorRT 11 only: the FP16 ONNX the engine was built from

The build step writes these files and edge reads them back (edge.vision.backends.engines), so
the sidecar's schema lives here, with the build, and edge imports it from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

ENGINE_FILE = "model.plan"
SIDECAR_FILE = "model.plan.json"
TIMING_CACHE_FILE = "timing.cache"
CONFIG_FILE = "config.toml"
SIDECAR_FORMAT = 1


class TensorInfo(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    mode: Literal["input", "output"]
    shape: list[int]  # -1 for the dynamic batch dimension
    dtype: str  # numpy name: float32, float16


class Sidecar(BaseModel):
    """Everything about one built engine, written as JSON beside it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: int = SIDECAR_FORMAT
    model: str
    version: int
    role: str
    source_onnx: str  # where the ONNX was at build time; informational
    source_sha256: str  # the model's ONNX (what the daemon's models/ must still hold)
    built_onnx_sha256: str  # what TensorRT parsed: the FP16 copy on TensorRT 11, else the source
    engine_sha256: str
    tensorrt_version: str
    gpu_name: str
    compute_capability: str
    precision: Literal["fp16", "fp32"]
    network: Literal["strongly-typed", "weakly-typed"]
    min_batch: int
    opt_batch: int
    max_batch: int
    workspace_mib: int
    io: list[TensorInfo]
    built_at: str
    build_seconds: float
    spec: dict[str, Any]  # the model's config table, as the model said it (edge's ModelSpec)
    # The prologue and epilogue fused around the model (build_engine.graph.GraphIO): uint8
    # pixels in, probabilities out. None: the model as it is (engines built before fusing).
    fused: dict[str, Any] | None = None

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"

    @classmethod
    def from_json(cls, text: str) -> Sidecar:
        """Parse a sidecar: json.JSONDecodeError if it is not JSON, pydantic's ValidationError
        (both ValueErrors) if it is not a sidecar."""
        return cls.model_validate(json.loads(text))


@dataclass(frozen=True)
class EngineFiles:
    plan: Path
    sidecar: Sidecar

    @property
    def sidecar_path(self) -> Path:
        return self.plan.with_name(SIDECAR_FILE)


def engine_dir(root: Path, name: str, version: int) -> Path:
    return root / name / str(version)


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write all of ``data`` or leave the old file: a killed build never leaves half an engine."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_engine(
    root: Path, plan: bytes, sidecar: Sidecar, *, config: Path | None = None
) -> EngineFiles:
    """Store an engine and its sidecar under ``root/<model>/<version>/`` (and the model's
    ``config`` beside the version folder). The plan goes first and the sidecar records the
    plan's hash, so a crash between the two leaves a sidecar that no longer matches: never
    loaded."""
    folder = engine_dir(root, sidecar.model, sidecar.version)
    plan_path = folder / ENGINE_FILE
    atomic_write(plan_path, plan)
    atomic_write(folder / SIDECAR_FILE, sidecar.to_json().encode())
    if config is not None:
        atomic_write(folder.parent / CONFIG_FILE, config.read_bytes())
    return EngineFiles(plan_path, sidecar)
