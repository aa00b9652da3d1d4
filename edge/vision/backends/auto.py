"""Picks a backend by name, or the best available one for ``auto``, and says why.

``auto``: the TensorRT backend when tensorrt and pycuda import and a GPU answers and engines
are configured; else ONNX Runtime, on its CUDA/TensorRT execution providers when
onnxruntime-gpu offers them, else on the CPU. The reason goes into the log line.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import structlog

from edge.vision.backends.base import Backend, BackendError
from edge.vision.backends.engines import INSTALL_HINT, EnvFacts, detect_facts
from edge.vision.modelspec import ModelFiles

BackendName = Literal["onnxruntime", "tensorrt", "auto"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "tensorrt", "auto")
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
log = structlog.get_logger(__name__)
# What `backend chosen` adds to its line, or None for no line: one load of N copies of the
# models says it once per model (edge.vision.replicas), not once per copy.
_CHOICE_LINE: ContextVar[tuple[tuple[str, Any], ...] | None] = ContextVar(
    "edge_backend_choice_line", default=()
)


@contextlib.contextmanager
def choice_line(extra: dict[str, Any] | None) -> Iterator[None]:
    """Within the block, ``create`` adds ``extra`` to its `backend chosen` line; None: no line."""
    token = _CHOICE_LINE.set(None if extra is None else tuple(extra.items()))
    try:
        yield
    finally:
        _CHOICE_LINE.reset(token)


@dataclass(frozen=True)
class Choice:
    backend: Literal["onnxruntime", "tensorrt"]
    providers: tuple[str, ...]  # ONNX Runtime's, best first; empty for tensorrt
    reason: str


def ort_providers(available: list[str] | None = None) -> tuple[str, ...]:
    """ONNX Runtime's providers to ask for: its GPU ones when installed, CPU always last."""
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    return (*[p for p in ORT_GPU_PROVIDERS if p in available], "CPUExecutionProvider")


def choose(
    requested: BackendName,
    *,
    engines: Path | None = None,
    facts: EnvFacts | None = None,
    available: list[str] | None = None,
) -> Choice:
    """The backend to use and the reason, for the log line a plant engineer reads."""
    if requested == "tensorrt":
        return Choice("tensorrt", (), "requested")
    providers = ort_providers(available)
    on = "on " + ", ".join(providers)
    if requested == "onnxruntime":
        return Choice("onnxruntime", providers, f"requested; {on}")
    facts = facts if facts is not None else detect_facts()
    if not facts.gpu_ready:
        why = "; ".join(facts.problems) or "no GPU"
        return Choice("onnxruntime", providers, f"TensorRT unavailable ({why}); {on}")
    if engines is None:
        return Choice(
            "onnxruntime",
            providers,
            f"TensorRT {facts.tensorrt_version} and {facts.gpu_name} are here, but no engine "
            f"folder is configured (--engines; build one with `edge build`); {on}",
        )
    return Choice(
        "tensorrt",
        (),
        f"TensorRT {facts.tensorrt_version}, pycuda {facts.pycuda_version} and "
        f"{facts.gpu_name} (sm {facts.compute_capability}) are available",
    )


def create(
    requested: BackendName,
    files: ModelFiles,
    sample_shape: tuple[int, ...],
    *,
    max_batch: int,
    threads: int,
    engines: Path | None = None,
    rebuild_stale: bool = False,
    facts: EnvFacts | None = None,
    fused: bool = False,
) -> Backend:
    """A backend for one model. ``fused``: ONNX Runtime runs the model inside its prologue and
    epilogue (``build_engine.graph``); a TensorRT engine is fused if it was built so (its
    ``fused`` attribute says which, whatever was asked)."""
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; use one of {list(BACKENDS)}")
    choice = choose(requested, engines=engines, facts=facts)
    extra = _CHOICE_LINE.get()
    if extra is not None:
        log.info(
            "backend chosen",
            model=files.model_id,
            backend=choice.backend,
            requested=requested,
            reason=choice.reason,
            **dict(extra),
        )
    if choice.backend == "tensorrt":
        return _tensorrt(files, sample_shape, max_batch, engines, rebuild_stale, facts)
    from edge.vision.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        files,
        sample_shape,
        max_batch=max_batch,
        threads=threads,
        providers=provider_options(choice.providers, engines),
        fused=fused,
    )


def provider_options(
    providers: tuple[str, ...], engines: Path | None
) -> list[str | tuple[str, dict[str, str]]]:
    """ONNX Runtime's TensorRT provider builds its engines at every start unless it may cache
    them, so it is only asked for with an engine folder to cache in (and in FP16, like ours)."""
    chosen: list[str | tuple[str, dict[str, str]]] = []
    for name in providers:
        if name != "TensorrtExecutionProvider":
            chosen.append(name)
        elif engines is not None:
            options = {
                "trt_fp16_enable": "True",
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": str(engines / "onnxruntime-trt"),
            }
            chosen.append((name, options))
    return chosen


def _tensorrt(
    files: ModelFiles,
    sample_shape: tuple[int, ...],
    max_batch: int,
    engines: Path | None,
    rebuild_stale: bool,
    facts: EnvFacts | None,
) -> Backend:
    if engines is None:
        raise BackendError(
            "the TensorRT backend needs an engine folder (--engines, or `engines` in the config); "
            f"build one with `edge build {files.onnx_path.parent.parent.parent} --out engines/`"
        )
    facts = facts if facts is not None else detect_facts()
    if facts.tensorrt_version is None or facts.pycuda_version is None:
        raise BackendError(
            f"the TensorRT backend cannot run here: {'; '.join(facts.problems)}. Install: "
            f"{INSTALL_HINT}, or use --backend onnxruntime"
        )
    if facts.gpu_name is None:
        raise BackendError(
            f"the TensorRT backend needs an NVIDIA GPU: {'; '.join(facts.problems)}; "
            "use --backend onnxruntime"
        )
    from edge.vision.backends import engines as cache
    from edge.vision.backends.tensorrt import TensorRTBackend

    engine = cache.ensure(engines, files, facts, rebuild_stale=rebuild_stale, max_batch=max_batch)
    return TensorRTBackend(files, engine, sample_shape, max_batch=max_batch)
