"""ONNX Runtime backend: the CPU default (and CUDA/TensorRT execution providers when present)."""

from __future__ import annotations

import os

import numpy as np
import onnxruntime as ort

from edge.vision.backends.base import BackendError, check_input_shape
from edge.vision.modelspec import ModelFiles

_ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


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
    ) -> None:
        self.files = files
        self.max_batch = max_batch
        self.providers = providers or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(
                str(files.onnx_path),
                sess_options=session_options(threads),
                providers=self.providers,
            )
        except Exception as exc:  # ORT raises its own exception types per failure
            raise BackendError(f"ONNX Runtime cannot load {files.onnx_path}: {exc}") from None
        spec = files.spec
        self.input = _pick(self.session.get_inputs(), spec.input.name, "input", files)
        self.output = _pick(self.session.get_outputs(), spec.output.name, "output", files)
        if self.input.type not in _ORT_TYPES:
            raise BackendError(
                f"model {files.model_id} input {self.input.name!r} is {self.input.type}; "
                "only float32 and float16 inputs are supported"
            )
        self.input_dtype = np.dtype(_ORT_TYPES[self.input.type])
        check_input_shape(files, self.input.name, list(self.input.shape), sample_shape)
        batch_dim = self.input.shape[0]
        if isinstance(batch_dim, int) and batch_dim > 0:
            # A model exported with a fixed batch runs with exactly that batch.
            self.max_batch = min(self.max_batch, batch_dim)
            self.fixed_batch: int | None = batch_dim
        else:
            self.fixed_batch = None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if self.fixed_batch is not None and n != self.fixed_batch:
            padded = np.zeros((self.fixed_batch, *batch.shape[1:]), batch.dtype)
            padded[:n] = batch
            batch = padded
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


def _pick(args: list, wanted: str | None, what: str, files: ModelFiles):
    if wanted is None:
        return args[0]
    for arg in args:
        if arg.name == wanted:
            return arg
    names = [a.name for a in args]
    raise BackendError(
        f"model {files.model_id} has no {what} named {wanted!r} ({what}.name in its config); "
        f"its {what}s are {names}"
    )
