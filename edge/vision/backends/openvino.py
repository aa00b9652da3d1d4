"""OpenVINO backend: Intel CPUs (AMX, AVX-512 BF16), iGPUs and NPUs, from the same fused graph.

The model runs inside its prologue and epilogue (``build_engine.graph``, the form ONNX Runtime
serves): uint8 pixels in, probabilities out. On a CPU the precision hint is what makes it fast:
bf16 runs the convolutions on AMX, which ONNX Runtime's CPU provider leaves unused
(docs/performance.md has the numbers); ``auto`` takes OpenVINO's default for the device.

One compiled model per model and settings is shared by every worker of a process, compiled
with one stream per worker: OpenVINO places each stream's threads on their own cores, whereas
separately compiled one-thread models all land on the same core (measured: half the tiles/s).
Each backend owns its infer request, so each inference thread still owns its backend.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from xml.etree import ElementTree

import numpy as np

from edge.vision.backends.base import BackendError, fixed_batch, padded
from edge.vision.backends.modelio import fused_model
from edge.vision.modelspec import ModelFiles

Precision = Literal["auto", "f32", "bf16", "f16"]
PRECISIONS: tuple[str, ...] = ("auto", "f32", "bf16", "f16")
INSTALL_HINT = "pip install 'edge[openvino]'"
# Virtual devices that pick or combine real ones; they are not in Core.available_devices.
_VIRTUAL_DEVICES = ("AUTO", "MULTI", "HETERO", "BATCH")


@dataclass(frozen=True)
class OpenVinoOptions:
    """How the OpenVINO backend compiles: the config's ``openvino_*`` keys, plus the streams."""

    device: str = "CPU"  # "CPU", "GPU", "GPU.1", "NPU", or OpenVINO's "AUTO:..."
    precision: Precision = "auto"  # the inference precision hint; auto: the device's default
    cache_dir: Path | None = None  # compiled models kept here across starts
    streams: int = 1  # one per inference worker sharing the compiled model


def import_openvino() -> Any:
    """The openvino module, or a BackendError that says how to install it."""
    try:
        import openvino
    except ImportError:
        raise BackendError(
            f"the OpenVINO backend needs the openvino package, which is not installed: "
            f"{INSTALL_HINT}, or use --backend onnxruntime"
        ) from None
    return openvino


def version() -> str | None:
    """OpenVINO's version, or None where it is not installed (for choices and reports)."""
    try:
        import openvino
    except ImportError:
        return None
    return openvino.__version__.split("-")[0]


class _Compiled:
    """A compiled model and what it was compiled with, shared by the backends that use it."""

    def __init__(self, compiled: Any, precision: str, streams: int) -> None:
        self.model = compiled
        self.precision = precision
        self.streams = streams
        self.lock = threading.Lock()  # create_infer_request from several loading threads


_CORE: Any = None
_COMPILED: weakref.WeakValueDictionary[tuple, _Compiled] = weakref.WeakValueDictionary()
_COMPILE_LOCK = threading.Lock()


def core() -> Any:
    """The process's one OpenVINO Core (it owns the plugins and their thread pools)."""
    global _CORE
    with _COMPILE_LOCK:
        if _CORE is None:
            module = import_openvino()
            try:
                _CORE = module.Core()
            except Exception as exc:  # its plugins failed to load: a broken install
                raise BackendError(f"OpenVINO {version()} cannot start: {exc}") from None
        return _CORE


def devices() -> list[str]:
    """The devices OpenVINO finds here (CPU always; GPU, GPU.1, NPU where their drivers are)."""
    try:
        return list(core().available_devices)
    except RuntimeError as exc:  # a device plugin that fails to enumerate
        raise BackendError(f"OpenVINO cannot list its devices: {exc}") from None


class OpenVinoBackend:
    name = "openvino"
    fused = True

    def __init__(
        self,
        files: ModelFiles,
        sample_shape: tuple[int, ...],
        *,
        max_batch: int = 32,
        threads: int = 0,
        options: OpenVinoOptions | None = None,
    ) -> None:
        self.files = files
        self.options = options or OpenVinoOptions()
        self.max_batch = max_batch
        self.input_dtype = np.dtype(np.uint8)
        source, (model_input, _) = fused_model(files, sample_shape)
        self.fixed_batch = fixed_batch(model_input.shape[0])
        if self.fixed_batch is not None:
            self.max_batch = min(self.max_batch, self.fixed_batch)
        self._compiled = _compile(files, source, self.options, threads)
        with self._compiled.lock:
            self._request = self._compiled.model.create_infer_request()

    def infer(self, batch: np.ndarray) -> np.ndarray:
        n = batch.shape[0]
        batch = padded(batch, self.fixed_batch)
        # share_inputs: OpenVINO reads the batch buffer in place; the outputs are copied out of
        # the request's own tensors, which the next call overwrites.
        out = self._request.infer({0: np.ascontiguousarray(batch)}, share_inputs=True)
        return out[0][:n]

    @property
    def precision(self) -> str:
        return self._compiled.precision

    def describe(self) -> dict[str, str]:
        return {
            "backend": self.name,
            "openvino": version() or "?",
            "device": self.options.device,
            "precision": self.precision,
            "streams": str(self._compiled.streams),
        }

    def close(self) -> None:
        self._request = None
        self._compiled = None  # the last backend to let go frees the compiled model


def _compile(files: ModelFiles, source: bytes, options: OpenVinoOptions, threads: int) -> _Compiled:
    # The fused graph holds the model and everything of its config that shapes the graph.
    key = (hashlib.sha256(source).hexdigest(), options, threads)
    with _COMPILE_LOCK:
        shared = _COMPILED.get(key)
    if shared is not None:
        return shared
    ov_core = core()
    available = devices()
    device = options.device
    kind = device.split(":")[0].split(".")[0]
    if kind not in _VIRTUAL_DEVICES and device not in available and kind not in available:
        raise BackendError(
            f"OpenVINO has no device {device!r} here (openvino_device in the config); "
            f"it has {available}"
        )
    config = _compile_config(ov_core, device, options, threads)
    try:
        model = ov_core.read_model(source, b"")
        if options.precision != "f32":
            model = with_precise_stem(ov_core, model)
        compiled = ov_core.compile_model(model, device, config)
    except Exception as exc:  # OpenVINO raises RuntimeError with its own message
        raise BackendError(
            f"OpenVINO cannot compile model {files.model_id} for {device} ({config}): {exc}"
        ) from None
    shared = _Compiled(
        compiled, _precision_name(compiled), _property(compiled, "NUM_STREAMS", options.streams)
    )
    with _COMPILE_LOCK:
        _COMPILED[key] = shared
    return shared


def _compile_config(core: Any, device: str, options: OpenVinoOptions, threads: int) -> dict:
    """Only the properties the device supports: a GPU has no thread count, an NPU no streams."""
    try:
        supported = set(core.get_property(device, "SUPPORTED_PROPERTIES"))
    except Exception:  # an "AUTO:..." device list answers for itself
        supported = set()
    wanted: dict[str, Any] = {"NUM_STREAMS": max(1, options.streams)}
    if threads:
        wanted["INFERENCE_NUM_THREADS"] = threads * max(1, options.streams)
    if options.precision != "auto":
        wanted["INFERENCE_PRECISION_HINT"] = options.precision
    if options.cache_dir is not None:
        try:
            options.cache_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise BackendError(
                f"openvino_cache {str(options.cache_dir)!r} cannot be created: {exc.strerror}"
            ) from None
        wanted["CACHE_DIR"] = str(options.cache_dir)
    missing = [k for k in wanted if supported and k not in supported and k != "CACHE_DIR"]
    if "INFERENCE_PRECISION_HINT" in missing:
        raise BackendError(
            f"OpenVINO device {device} takes no precision hint; set openvino_precision = 'auto'"
        )
    return {k: v for k, v in wanted.items() if k not in missing}


def _property(compiled: Any, name: str, default: Any) -> Any:
    try:
        return compiled.get_property(name)
    except Exception:  # not every device reports every property
        return default


def _precision_name(compiled: Any) -> str:
    """The precision the compiled model runs in, as the config spells it (f32, bf16, f16)."""
    value = _property(compiled, "INFERENCE_PRECISION_HINT", None)
    if value is None:
        return "device default"
    text = str(value).lower()
    for name, short in (("bfloat16", "bf16"), ("float16", "f16"), ("float32", "f32")):
        if name in text or text.endswith(f"'{short}'>") or text == short:
            return short
    return text


# Ops that take their input's precision from the convolution before them (bias, activation,
# pooling) belong to its stem; the stem ends at the next convolution.
_CONVOLUTIONS = {"Convolution", "GroupConvolution", "ConvolutionBackpropData", "MatMul"}


def stem_ops(model: Any) -> set[str]:
    """Names of the ops from the model's inputs up to and through the first convolution on
    every path, with the ops that follow it up to the next one: the input's stem."""
    depth: dict[str, int] = {}  # convolutions on the longest path from an input, through the op
    stem: set[str] = set()
    for op in model.get_ordered_ops():
        before = [depth.get(i.get_node().get_friendly_name(), 0) for i in op.input_values()]
        own = max(before, default=0) + (op.get_type_name() in _CONVOLUTIONS)
        depth[op.get_friendly_name()] = own
        if own <= 1 and op.get_type_name() != "Constant":
            stem.add(op.get_friendly_name())
    return stem


def with_precise_stem(ov_core: Any, model: Any) -> Any:
    """``model`` with its input's stem kept in f32 under a bf16 or f16 precision hint.

    The first convolution sees the pixels themselves; in bf16 (8 significant bits) it blurs
    the faint one-pixel edges of scratches, and the masks' IoU against FP32 on real strips
    fell to 0.975 (docs/performance.md). In f32 it costs next to nothing, being a small share
    of the model's operations. OpenVINO keeps an op in f32 under a lower hint where its IR
    marks it ``precise`` (``ov::pass::disable_fp16_compression``), which the Python API
    cannot set: so the model goes through its IR on disk, marked there, and back.
    """
    openvino = import_openvino()
    names = stem_ops(model)
    with tempfile.TemporaryDirectory(prefix="edge-openvino-") as folder:
        xml = Path(folder) / "model.xml"
        openvino.save_model(model, xml, compress_to_fp16=False)
        tree = ElementTree.parse(xml)
        for layer in tree.getroot().iter("layer"):
            if layer.get("name") not in names:
                continue
            info = layer.find("rt_info")
            if info is None:
                info = ElementTree.Element("rt_info")
                data = layer.find("data")
                layer.insert(0 if data is None else list(layer).index(data) + 1, info)
            ElementTree.SubElement(info, "attribute", name="precise", version="0")
        tree.write(xml)
        return ov_core.read_model(xml)
