"""Build FP16 TensorRT engines from the models' ONNX files, as NVIDIA's Python API documents it.

TensorRT 10.x (Jetson Orin ships 10.3): the FP32 ONNX is parsed into a weakly typed network
and ``BuilderFlag.FP16`` lets TensorRT pick FP16 kernels, but for the input's stem, which is
held to FP32. TensorRT 11.x removed that flag and weak typing: every network is strongly typed,
so FP16 must already be in the graph; the ONNX is converted on the CPU first (build_engine.fp16,
which keeps the same stem in FP32). References are listed in docs/engines.md.
"""

from __future__ import annotations

import hashlib
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from build_engine.fp16 import convert_to_fp16, stem_nodes
from build_engine.graph import FuseError, GraphIO, fuse
from build_engine.machine import INSTALL_HINT, EnvFacts, detect_facts
from build_engine.models import ModelFacts
from build_engine.sidecar import (
    TIMING_CACHE_FILE,
    EngineFiles,
    Sidecar,
    TensorInfo,
    atomic_write,
    engine_dir,
    file_sha256,
    now_iso,
    write_engine,
)

FUSED_FILE = "model.fused.onnx"  # beside the plan: the fused graph the engine was built from


class BuildError(RuntimeError):
    """A model that cannot be built into an engine; the message names it and the reason."""


@dataclass(frozen=True)
class BuildOptions:
    fp16: bool = True
    max_batch: int = 32
    opt_batch: int | None = None  # None: max_batch (the daemon fills batches under load)
    min_batch: int = 1
    workspace_mib: int = 4096
    timing_cache: Path | None = None  # None: <out>/timing.cache

    def profile(self) -> tuple[int, int, int]:
        opt = self.opt_batch or self.max_batch
        if not 1 <= self.min_batch <= opt <= self.max_batch:
            raise BuildError(
                f"batch sizes must satisfy 1 <= min ({self.min_batch}) <= opt ({opt}) "
                f"<= max ({self.max_batch})"
            )
        return self.min_batch, opt, self.max_batch


def require_tensorrt() -> ModuleType:
    try:
        import tensorrt
    except ImportError:
        raise BuildError(
            f"tensorrt is not installed, so no engine can be built: {INSTALL_HINT}"
        ) from None
    return tensorrt


def make_logger(trt: ModuleType) -> Any:
    """A TensorRT logger that keeps errors, so a failed build says what TensorRT said."""

    class Collecting(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            severities = trt.ILogger.Severity
            if severity in (severities.ERROR, severities.INTERNAL_ERROR):
                self.errors.append(msg)
            if severity in (severities.ERROR, severities.INTERNAL_ERROR, severities.WARNING):
                print(f"[TensorRT] {msg}", file=sys.stderr)

    return Collecting()


@dataclass(frozen=True)
class ParserProblem:
    code: str  # ErrorCode name: UNSUPPORTED_NODE, INVALID_NODE, ...
    node: int  # -1: not about one node
    node_name: str
    operator: str
    desc: str


def parser_problems(parser: Any) -> list[ParserProblem]:
    problems = []
    for i in range(parser.num_errors):
        err = parser.get_error(i)
        # node_name/node_operator came with TensorRT 10; older parsers only give the index.
        problems.append(
            ParserProblem(
                code=getattr(err.code(), "name", str(err.code())),
                node=int(err.node()),
                node_name=str(getattr(err, "node_name", lambda: "")()),
                operator=str(getattr(err, "node_operator", lambda: "")()),
                desc=str(err.desc()),
            )
        )
    return problems


def describe_parser_problems(onnx_path: Path, problems: list[ParserProblem]) -> str:
    unsupported = sorted(
        {
            f"{p.operator or '?'} (node {p.node_name or p.node})"
            for p in problems
            if p.code == "UNSUPPORTED_NODE"
        }
    )
    lines = [f"TensorRT cannot parse {onnx_path}:"]
    if unsupported:
        lines.append(f"  unsupported nodes: {', '.join(unsupported)}")
    for p in problems:
        where = f"node {p.node}" + (f" {p.node_name!r}" if p.node_name else "")
        op = f" ({p.operator})" if p.operator else ""
        lines.append(
            f"  - {p.code} at {where}{op}: {p.desc}" if p.node >= 0 else f"  - {p.code}: {p.desc}"
        )
    return "\n".join(lines)


def build_model(
    model: ModelFacts, out: Path, options: BuildOptions, *, facts: EnvFacts | None = None
) -> EngineFiles:
    """Build one model's engine into ``out`` (build_engine.sidecar has the layout)."""
    trt = require_tensorrt()
    facts = facts or detect_facts()
    if facts.gpu_name is None or facts.compute_capability is None:
        raise BuildError(
            f"cannot build {model.model_id}: {'; '.join(facts.problems) or 'no GPU found'}"
        )
    min_b, opt_b, max_b = options.profile()
    strongly_typed = int(trt.__version__.split(".")[0]) >= 11
    folder = engine_dir(out, model.name, model.version)
    parsed = model.onnx_path
    if model.graph is not None:
        parsed = fused_onnx(model, folder / FUSED_FILE)
    if options.fp16 and strongly_typed:  # the graph TensorRT parses, fused or not
        parsed = convert_to_fp16(parsed, folder / "model.fp16.onnx")
    cache_path = options.timing_cache or out / TIMING_CACHE_FILE
    started = time.monotonic()
    plan, io, batch = _build(trt, model, parsed, options, strongly_typed, cache_path)
    sidecar = Sidecar(
        model=model.name,
        version=model.version,
        role=model.role,
        source_onnx=str(model.onnx_path),
        source_sha256=model.sha256,
        built_onnx_sha256=file_sha256(parsed),
        engine_sha256=_sha256(plan),
        tensorrt_version=trt.__version__,
        gpu_name=facts.gpu_name,
        compute_capability=facts.compute_capability,
        precision="fp16" if options.fp16 else "fp32",
        network="strongly-typed" if strongly_typed else "weakly-typed",
        min_batch=batch[0] if batch else min_b,
        opt_batch=batch[1] if batch else opt_b,
        max_batch=batch[2] if batch else max_b,
        workspace_mib=options.workspace_mib,
        io=io,
        built_at=now_iso(),
        build_seconds=round(time.monotonic() - started, 1),
        spec=model.spec,
        fused=model.graph,
    )
    return write_engine(out, plan, sidecar, config=model.config)


def fused_onnx(model: ModelFacts, path: Path) -> Path:
    """The model inside its prologue and epilogue (build_engine.graph), written to ``path``."""
    assert model.graph is not None
    try:
        import onnx
    except ImportError:
        raise BuildError("fusing the pre- and post-processing needs the onnx package") from None
    try:
        fused = fuse(onnx.load(str(model.onnx_path)), GraphIO(**model.graph), target="tensorrt")
    except (FuseError, TypeError) as err:
        raise BuildError(
            f"model {model.model_id}: cannot fuse its pre/post-processing: {err}"
        ) from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, fused.SerializeToString())
    return path


def hold_in_fp32(trt: ModuleType, network: Any, nodes: set[str]) -> list[str]:
    """Ask TensorRT to run the layers it parsed from ``nodes`` (ONNX node names) in FP32 under
    the FP16 flag; returns the layers' names. The parser names a layer after its node, and a
    node it expands into several layers by that name and a suffix."""
    held = []
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        if not any(layer.name == n or layer.name.startswith(n + "_") for n in nodes):
            continue
        outputs = range(layer.num_outputs)
        if any(layer.get_output(j).dtype not in (trt.float32, trt.float16) for j in outputs):
            continue  # shape arithmetic (int32/int64): no precision to choose
        layer.precision = trt.float32
        for j in outputs:
            layer.set_output_type(j, trt.float32)
        held.append(layer.name)
    return held


def _load_onnx(path: Path) -> Any:
    import onnx  # a dependency of the gpu extra (the FP16 conversion needs it too)

    return onnx.load(str(path))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _build(
    trt: ModuleType,
    model: ModelFacts,
    onnx_path: Path,
    options: BuildOptions,
    strongly_typed: bool,
    cache_path: Path,
) -> tuple[bytes, list[TensorInfo], tuple[int, int, int] | None]:
    logger = make_logger(trt)
    builder = trt.Builder(logger)
    # Flags 0: networks are always explicit-batch since 10.0 (EXPLICIT_BATCH is gone in 11);
    # on 10.x this is a weakly typed network, on 11.x strong typing is always on.
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        raise BuildError(
            f"model {model.model_id}: "
            + describe_parser_problems(onnx_path, parser_problems(parser))
        )
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_mib << 20)
    if options.fp16 and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
        hold_in_fp32(trt, network, set(stem_nodes(_load_onnx(onnx_path).graph)))
        config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
    profile = builder.create_optimization_profile()
    batch = options.profile()
    fixed: tuple[int, int, int] | None = None
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = list(tensor.shape)
        rest = shape[1:]
        if any(d < 0 for d in rest):
            raise BuildError(
                f"model {model.model_id} input {tensor.name!r} has shape {shape}: only the batch "
                "dimension may be dynamic; export the model with fixed height, width and channels"
            )
        if shape[0] > 0:  # exported with a fixed batch: the engine runs exactly that batch
            fixed = (shape[0],) * 3
            dims = [tuple(shape)] * 3
        else:
            dims = [(b, *rest) for b in batch]
        profile.set_shape(tensor.name, *dims)
    config.add_optimization_profile(profile)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    # ignore_mismatch=False: a cache from another GPU or TensorRT is not used (the builder
    # starts a fresh one) rather than trusted.
    config.set_timing_cache(cache, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        said = "; ".join(logger.errors[-5:]) or "no error was logged"
        raise BuildError(f"TensorRT could not build an engine for {model.model_id}: {said}")
    atomic_write(cache_path, bytes(config.get_timing_cache().serialize()))
    data = bytes(plan)
    return data, _describe_io(trt, data, logger, model), fixed


def _describe_io(trt: ModuleType, plan: bytes, logger: Any, model: ModelFacts) -> list[TensorInfo]:
    """Load the fresh engine once: proves it deserializes, and reads its I/O for the sidecar."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise BuildError(f"the engine just built for {model.model_id} does not deserialize")
    io = []
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        mode = engine.get_tensor_mode(name)
        io.append(
            TensorInfo(
                name=name,
                mode="input" if mode == trt.TensorIOMode.INPUT else "output",
                shape=[int(d) for d in engine.get_tensor_shape(name)],
                dtype=np.dtype(trt.nptype(engine.get_tensor_dtype(name))).name,
            )
        )
    return io
