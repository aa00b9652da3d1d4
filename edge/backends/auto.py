"""Picks a backend by name, or the best available one for ``auto``, and says why."""

from __future__ import annotations

import importlib.util
from typing import Literal

import structlog

from edge.backends.base import Backend, BackendError
from edge.modelspec import ModelFiles

BackendName = Literal["onnxruntime", "auto"]
log = structlog.get_logger(__name__)


def choose(requested: BackendName) -> tuple[str, str]:
    """The backend to use and the reason, for the log line a plant engineer reads."""
    if requested == "onnxruntime":
        return "onnxruntime", "requested"
    if importlib.util.find_spec("tensorrt") is None:
        return "onnxruntime", "the tensorrt package is not installed (pip install 'edge[gpu]')"
    # The TensorRT backend lands with the engine build step; until then auto stays on CPU.
    return "onnxruntime", "the TensorRT backend is not part of this release yet"


def create(
    requested: BackendName,
    files: ModelFiles,
    sample_shape: tuple[int, ...],
    *,
    max_batch: int,
    threads: int,
) -> Backend:
    name, reason = choose(requested)
    log.info(
        "backend chosen", model=files.model_id, backend=name, requested=requested, reason=reason
    )
    if name == "onnxruntime":
        from edge.backends.onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend(files, sample_shape, max_batch=max_batch, threads=threads)
    raise BackendError(f"unknown backend {name!r}")
