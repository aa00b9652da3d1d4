"""ONNX Runtime backend: the CPU default (and CUDA/TensorRT execution providers when present).

``fused``: the session runs the model inside its prologue and epilogue (``build_engine.graph``),
uint8 pixels in, probabilities out. The model's own inputs and outputs are checked against its
config first, on the ONNX graph, so a wrong key is named before anything is fused.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import onnxruntime as ort

from edge.vision.backends.base import BackendError, check_input_shape, fixed_batch, padded
from edge.vision.backends.modelio import ORT_TYPES, check_input_type, fused_model, pick
from edge.vision.modelspec import ModelFiles


def session_options(threads: int) -> ort.SessionOptions:
    options = ort.SessionOptions()
    # One inference thread feeds the session, so parallelism belongs inside each operator;
    # inter-op threads would only compete with it for the same cores.
    options.intra_op_num_threads = threads or (os.cpu_count() or 1)
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # ORT's own warnings go to stderr unstructured
    # Idle intra-op threads would otherwise spin for the next parallel section, burning the
    # cores the receiver, publisher and post-processing need between model calls (and, on a
    # shared box, taking turns with other work). Measured on 2 cores: with spinning a busy
    # machine made throughput erratic (55-410 tiles/s); without it, steady (docs/performance.md).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(
        self,
        files: ModelFiles,
        sample_shape: tuple[int, ...],
        *,
        max_batch: int = 32,
        threads: int = 0,
        providers: list[str | tuple[str, dict[str, str]]] | None = None,
        fused: bool = False,
    ) -> None:
        self.files = files
        self.max_batch = max_batch
        self.providers = providers or ["CPUExecutionProvider"]
        self.fused = fused
        source: str | bytes = str(files.onnx_path)
        if fused:
            source, args = fused_model(files, sample_shape)
        try:
            self.session = ort.InferenceSession(
                source, sess_options=session_options(threads), providers=self.providers
            )
        except Exception as exc:  # ORT raises its own exception types per failure
            raise BackendError(f"ONNX Runtime cannot load {files.onnx_path}: {exc}") from None
        if not fused:
            args = _model_args(self.session, files)
        model_input, self.output_shape = args
        self.input_dtype = np.dtype(np.uint8 if fused else ORT_TYPES[model_input.type])
        self.input = self.session.get_inputs()[0] if fused else model_input
        self.output = (
            self.session.get_outputs()[0]
            if fused
            else pick(self.session.get_outputs(), files.spec.output.name, "output", files)
        )
        check_input_shape(files, model_input.name, list(model_input.shape), sample_shape)
        self.fixed_batch = fixed_batch(model_input.shape[0])
        if self.fixed_batch is not None:
            self.max_batch = min(self.max_batch, self.fixed_batch)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        batch = padded(batch, self.fixed_batch)
        (out,) = self.session.run([self.output.name], {self.input.name: batch})
        return out[:n]

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "onnxruntime": ort.__version__,
            "providers": ",".join(self.session.get_providers()),
        }

    def close(self) -> None:
        del self.session


def _model_args(session: ort.InferenceSession, files: ModelFiles) -> tuple[Any, list[Any]]:
    """The raw model's input (checked) and declared output shape, from its session."""
    spec = files.spec
    model_input = pick(session.get_inputs(), spec.input.name, "input", files)
    check_input_type(model_input, files)
    output = pick(session.get_outputs(), spec.output.name, "output", files)
    return model_input, list(output.shape)
