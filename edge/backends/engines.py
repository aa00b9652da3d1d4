"""TensorRT engines on disk: where each lives, the sidecar saying what it was built for, and the
check that decides whether it may be loaded here.

An engine folder mirrors the model repository it was built from (Triton-style)::

    engines/
      timing.cache                      # TensorRT's tactic timings, reused by every build
      segmenter/config.toml             # copied from the model, so the folder reads like one
      segmenter/1/model.plan            # the serialized engine
      segmenter/1/model.plan.json       # its sidecar (below)
      segmenter/1/model.fp16.onnx       # TensorRT 11 only: the FP16 ONNX the engine was built from

An engine runs only on the GPU model and TensorRT version it was built with, and only means
something for the exact ONNX it came from, so the sidecar records all three and nothing loads
unless they match (``check``). Nothing here imports tensorrt: the cache logic runs, and is
tested, on machines without a GPU, with the GPU facts injected.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from edge.backends.base import BackendError
from edge.modelspec import CONFIG_FILE, ModelFiles, ModelSpec, file_sha256
from edge.settings import format_validation_error

ENGINE_FILE = "model.plan"
SIDECAR_FILE = "model.plan.json"
TIMING_CACHE_FILE = "timing.cache"
SIDECAR_FORMAT = 1
INSTALL_HINT = (
    "pip install 'edge[gpu]' --extra-index-url https://pypi.nvidia.com "
    "(TensorRT wheels come from NVIDIA's index; pycuda needs the CUDA toolkit to build)"
)


@dataclass(frozen=True)
class EnvFacts:
    """What an engine must match on this machine; None where it could not be found out."""

    tensorrt_version: str | None
    gpu_name: str | None
    compute_capability: str | None  # "8.7" (Orin), "9.0" (H100)
    pycuda_version: str | None = None
    cuda_driver_version: int | None = None
    # Why a fact is missing, in words a plant engineer can act on.
    problems: tuple[str, ...] = field(default_factory=tuple)

    @property
    def tensorrt_major(self) -> int | None:
        if self.tensorrt_version is None:
            return None
        return int(self.tensorrt_version.split(".")[0])

    @property
    def gpu_ready(self) -> bool:
        """tensorrt and pycuda import and a GPU answers: the TensorRT backend can run."""
        return None not in (self.tensorrt_version, self.pycuda_version, self.gpu_name)


def detect_facts() -> EnvFacts:
    """Ask tensorrt and the CUDA driver (through pycuda) what this machine is."""
    problems: list[str] = []
    try:
        import tensorrt as trt

        trt_version: str | None = trt.__version__
    except ImportError:
        trt_version = None
        problems.append("the tensorrt package is not installed")
    except Exception as exc:  # a broken install (missing libnvinfer) fails in its own ways
        trt_version = None
        problems.append(f"tensorrt is installed but does not load: {exc}")
    gpu_name = capability = pycuda_version = driver = None
    try:
        import pycuda
        import pycuda.driver as cuda

        pycuda_version = pycuda.VERSION_TEXT
        cuda.init()
        driver = cuda.get_driver_version()
        if cuda.Device.count() == 0:
            problems.append("the CUDA driver reports no GPU")
        else:
            device = cuda.Device(0)
            gpu_name = device.name()
            capability = "{}.{}".format(*device.compute_capability())
    except ImportError:
        problems.append("the pycuda package is not installed")
    except Exception as exc:  # pycuda.driver.Error: no driver, no device, driver too old
        problems.append(f"no usable NVIDIA GPU: {exc}")
    return EnvFacts(trt_version, gpu_name, capability, pycuda_version, driver, tuple(problems))


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
    spec: dict[str, Any]  # the ModelSpec the daemon needs, as the model's config said it

    def model_spec(self) -> ModelSpec:
        return ModelSpec.model_validate(self.spec)


@dataclass(frozen=True)
class Mismatch:
    field: str
    engine: str
    local: str

    def __str__(self) -> str:
        return f"{self.field}: the engine has {self.engine!r}, this machine has {self.local!r}"


class EngineError(BackendError):
    """An engine that cannot be used; the message names the file, the field and the fix."""


class MissingEngine(EngineError):
    pass


class StaleEngine(EngineError):
    def __init__(self, message: str, mismatches: list[Mismatch]) -> None:
        super().__init__(message)
        self.mismatches = mismatches


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


def read_sidecar(path: Path) -> Sidecar:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise MissingEngine(
            f"{path} is missing: the engine beside it has no record of what it was built for"
        ) from None
    except json.JSONDecodeError as exc:
        raise EngineError(f"{path} is not valid JSON: {exc}") from None
    try:
        return Sidecar.model_validate(data)
    except ValidationError as exc:
        raise EngineError(f"{path}: {format_validation_error(exc)}") from None


def write_engine(root: Path, files: ModelFiles, plan: bytes, sidecar: Sidecar) -> EngineFiles:
    """Store an engine and its sidecar. The plan goes first and the sidecar records the plan's
    hash, so a crash between the two leaves a sidecar that no longer matches: never loaded."""
    folder = engine_dir(root, files.spec.name, files.version)
    plan_path = folder / ENGINE_FILE
    atomic_write(plan_path, plan)
    atomic_write(folder / SIDECAR_FILE, (sidecar.model_dump_json(indent=2) + "\n").encode())
    config = files.onnx_path.parent.parent / CONFIG_FILE
    if config.is_file():
        atomic_write(folder.parent / CONFIG_FILE, config.read_bytes())
    return EngineFiles(plan_path, sidecar)


def check(
    sidecar: Sidecar, facts: EnvFacts, onnx_sha256: str, engine_sha256: str | None = None
) -> list[Mismatch]:
    """Every field that stops this engine from being loaded here (empty: it may be loaded)."""

    def known(value: str | None) -> str:
        return "(unknown: " + "; ".join(facts.problems) + ")" if value is None else value

    found = []
    if sidecar.format != SIDECAR_FORMAT:
        found.append(Mismatch("format", str(sidecar.format), str(SIDECAR_FORMAT)))
    if sidecar.source_sha256 != onnx_sha256:
        found.append(Mismatch("source_sha256", sidecar.source_sha256, onnx_sha256))
    if engine_sha256 is not None and sidecar.engine_sha256 != engine_sha256:
        found.append(Mismatch("engine_sha256", sidecar.engine_sha256, engine_sha256))
    if sidecar.tensorrt_version != facts.tensorrt_version:
        found.append(
            Mismatch("tensorrt_version", sidecar.tensorrt_version, known(facts.tensorrt_version))
        )
    if sidecar.gpu_name != facts.gpu_name:
        found.append(Mismatch("gpu_name", sidecar.gpu_name, known(facts.gpu_name)))
    if sidecar.compute_capability != facts.compute_capability:
        found.append(
            Mismatch(
                "compute_capability", sidecar.compute_capability, known(facts.compute_capability)
            )
        )
    return found


def rebuild_command(files: ModelFiles, root: Path) -> str:
    return f"edge build {files.onnx_path.parent.parent} --out {root}"


def locate(root: Path, files: ModelFiles, facts: EnvFacts) -> EngineFiles:
    """The engine for this model, checked against this machine, or an error saying why not."""
    folder = engine_dir(root, files.spec.name, files.version)
    plan = folder / ENGINE_FILE
    fix = f"build it with `{rebuild_command(files, root)}`, or run with --rebuild-stale"
    if not plan.is_file():
        raise MissingEngine(f"no TensorRT engine for model {files.model_id} at {plan}: {fix}")
    sidecar = read_sidecar(folder / SIDECAR_FILE)
    mismatches = check(sidecar, facts, files.sha256, file_sha256(plan))
    if mismatches:
        raise StaleEngine(
            f"TensorRT engine {plan} does not match model {files.model_id} on this machine, "
            f"so it is not loaded: {'; '.join(map(str, mismatches))}. Re-{fix}",
            mismatches,
        )
    return EngineFiles(plan, sidecar)


def ensure(
    root: Path,
    files: ModelFiles,
    facts: EnvFacts,
    *,
    rebuild_stale: bool,
    max_batch: int,
) -> EngineFiles:
    """``locate``, and with ``rebuild_stale`` build a missing or stale engine first."""
    try:
        return locate(root, files, facts)
    except EngineError:
        if not rebuild_stale:
            raise
    from build_engine.build import BuildOptions, build_model  # GPU-only path

    build_model(files, root, BuildOptions(max_batch=max_batch), facts=facts)
    return locate(root, files, facts)


@dataclass(frozen=True)
class RepositoryEntry:
    name: str
    engine: EngineFiles | None
    problem: str | None  # why the folder holds no usable engine


def scan(root: Path) -> list[RepositoryEntry]:
    """Every engine folder under ``root`` (for `edge doctor`), without judging the machine."""
    entries = []
    if not root.is_dir():
        return entries
    for plan in sorted(root.glob(f"*/*/{ENGINE_FILE}")):
        name = plan.parent.parent.name
        try:
            entries.append(
                RepositoryEntry(
                    name, EngineFiles(plan, read_sidecar(plan.with_name(SIDECAR_FILE))), None
                )
            )
        except EngineError as err:
            entries.append(RepositoryEntry(name, None, str(err)))
    return entries
