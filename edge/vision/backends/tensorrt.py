"""TensorRT backend: a serialized engine run with pycuda, as NVIDIA's Python samples do it.

One CUDA context (the device's primary context, shared with TensorRT), one execution context,
one stream and one set of buffers per backend; the backend belongs to one inference thread.
Host buffers are page-locked and device buffers are sized for the engine's max batch once, so
a batch is: copy into the pinned input, set the input shape, async H2D, ``execute_async_v3``,
async D2H, synchronize. The context is pushed around every piece of GPU work and popped after,
so whichever thread runs it, nothing is left current on it.

We retain the primary context ourselves rather than import ``pycuda.autoprimaryctx``: that
module pushes the context onto whichever thread imports it and pops it at exit from the main
thread, which is wrong when the daemon loads models off the main thread (it does in tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from build_engine.graph import PIXELS, PROBS, SCORES
from build_engine.machine import INSTALL_HINT
from build_engine.sidecar import EngineFiles
from edge.vision.backends.base import BackendError, check_input_shape
from edge.vision.modelspec import ModelFiles


def import_gpu() -> tuple[Any, Any]:
    """tensorrt and pycuda.driver, or a BackendError that says how to install them."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise BackendError(
            f"the TensorRT backend needs {exc.name}, which is not installed: {INSTALL_HINT}"
        ) from None
    return trt, cuda


_LOGGER: Any = None


def _shared_logger(trt: Any) -> Any:
    """One logger for every runtime in the process: it must outlive all the objects created
    through it, and older TensorRT treated it as a process-wide singleton."""
    global _LOGGER
    if _LOGGER is None:
        _LOGGER = trt.Logger(trt.Logger.WARNING)
    return _LOGGER


class TensorRTBackend:
    name = "tensorrt"

    def __init__(
        self,
        files: ModelFiles,
        engine: EngineFiles,
        sample_shape: tuple[int, ...],
        *,
        max_batch: int = 32,
    ) -> None:
        trt, cuda = import_gpu()
        self.files = files
        self.engine_files = engine
        # Built around its prologue and epilogue (build_engine.graph): uint8 in, probabilities
        # out. An engine built before fusing runs on the host's pre- and post-processing.
        self.fused = engine.sidecar.fused is not None
        self._cuda = cuda
        self._trt_version = trt.__version__
        cuda.init()
        self._device = cuda.Device(0)
        self._ctx = self._device.retain_primary_context()
        self._logger = _shared_logger(trt)
        try:
            with self._current():
                self._load(trt, engine.plan, sample_shape, max_batch)
        except BaseException:
            self._ctx.detach()
            self._ctx = None
            raise

    @contextmanager
    def _current(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._cuda.Context.pop()

    def _load(self, trt: Any, plan: Path, sample_shape: tuple[int, ...], max_batch: int) -> None:
        files, cuda = self.files, self._cuda
        self.runtime = trt.Runtime(self._logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan.read_bytes())
        if self.engine is None:
            # The sidecar check passed, so this is a corrupt file or a driver problem.
            raise BackendError(
                f"TensorRT {trt.__version__} could not deserialize {plan} for model "
                f"{files.model_id} (see TensorRT's message above); rebuild it with `edge build`"
            )
        engine = self.engine
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if n not in inputs]
        if len(inputs) != 1:
            raise BackendError(
                f"engine {plan} has inputs {inputs}; the daemon feeds models with one input"
            )
        self.input_name = inputs[0]
        wanted_in, wanted_out = files.spec.input.name, files.spec.output.name
        if self.fused:  # the fused graph's own I/O (build_engine.graph)
            h, w = files.spec.feed.height, files.spec.feed.width
            wanted_in, wanted_out = PIXELS, SCORES if files.spec.role == "classifier" else PROBS
            sample_shape = (h, w, files.spec.input.channels)
        self.output_name = _pick(outputs, wanted_out, plan)
        if wanted_in not in (None, self.input_name):
            raise BackendError(
                f"engine {plan} has no input named {wanted_in!r} (input.name in the "
                f"model's config); its input is {self.input_name!r}"
            )
        shape = [int(d) for d in engine.get_tensor_shape(self.input_name)]
        check_input_shape(files, self.input_name, shape, sample_shape)
        # get_tensor_profile_shape -> (min, opt, max) of profile 0, the only one we build.
        profile_max = int(engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.max_batch = min(max_batch, profile_max)
        self.input_dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(self.input_name)))

        self.context = engine.create_execution_context()
        self.stream = cuda.Stream()
        self._input_tail = tuple(shape[1:])
        if not self.context.set_input_shape(self.input_name, (self.max_batch, *self._input_tail)):
            raise BackendError(f"engine {plan} rejects batch {self.max_batch} for its input")
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, Any] = {}
        for name in names:
            full = tuple(int(d) for d in self.context.get_tensor_shape(name))
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self.host[name] = cuda.pagelocked_empty(full, dtype)
            self.device[name] = cuda.mem_alloc(self.host[name].nbytes)
            # Addresses never change: every batch uses the leading rows of these buffers.
            self.context.set_tensor_address(name, int(self.device[name]))

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        if n > self.max_batch:
            raise BackendError(f"batch of {n} exceeds the engine's max batch {self.max_batch}")
        cuda = self._cuda
        with self._current():
            host_in = self.host[self.input_name]
            np.copyto(host_in[:n], batch, casting="same_kind")
            if not self.context.set_input_shape(self.input_name, (n, *self._input_tail)):
                raise BackendError(f"model {self.files.model_id}: engine rejects batch {n}")
            cuda.memcpy_htod_async(self.device[self.input_name], host_in[:n], self.stream)
            if not self.context.execute_async_v3(stream_handle=self.stream.handle):
                raise BackendError(f"model {self.files.model_id}: TensorRT execution failed")
            host_out = self.host[self.output_name]
            cuda.memcpy_dtoh_async(host_out[:n], self.device[self.output_name], self.stream)
            self.stream.synchronize()
        # The pinned buffer is reused by the next batch: hand out a copy (a fused engine's
        # uint8 maps as they are: a quarter of float32's bytes).
        if self.fused:
            return host_out[:n].copy()
        return host_out[:n].astype(np.float32)

    def describe(self) -> dict[str, str]:
        s = self.engine_files.sidecar
        return {
            "backend": self.name,
            "tensorrt": self._trt_version,
            "gpu": f"{s.gpu_name} (sm {s.compute_capability})",
            "engine": str(self.engine_files.plan),
            "precision": s.precision,
        }

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        with self._current():
            # Free device memory while its context is current, then the TensorRT objects.
            for allocation in self.device.values():
                allocation.free()
            self.device.clear()
            self.host.clear()
            del self.context, self.engine, self.runtime
        self._ctx.detach()
        self._ctx = None


def _pick(outputs: list[str], wanted: str | None, plan: Path) -> str:
    if wanted is None:
        return outputs[0]
    if wanted not in outputs:
        raise BackendError(
            f"engine {plan} has no output named {wanted!r} (output.name in the model's config); "
            f"its outputs are {outputs}"
        )
    return wanted
