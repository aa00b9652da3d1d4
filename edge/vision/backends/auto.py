"""Picks a backend by name, or the best available one for ``auto``, and says why.

``auto``: the TensorRT backend when tensorrt and pycuda import and a GPU answers and engines
are configured; else ONNX Runtime on its CUDA/TensorRT execution providers when
onnxruntime-gpu offers them; else, on an x86 CPU with openvino installed, OpenVINO for each
model that agrees with FP32 ONNX Runtime on the check strips (``agreement.check_fused``, as
the model loads); else ONNX Runtime on the CPU. The reason goes into the log line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import platform
import threading
from collections.abc import Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import structlog

from edge.vision.backends import agreement, openvino
from edge.vision.backends.agreement import Agreement, check_fused
from edge.vision.backends.base import Backend, BackendError
from edge.vision.backends.engines import INSTALL_HINT, EnvFacts, detect_facts
from edge.vision.backends.openvino import OpenVinoOptions
from edge.vision.modelspec import ModelFiles

BackendName = Literal["onnxruntime", "openvino", "tensorrt", "auto"]
BACKENDS: tuple[str, ...] = ("onnxruntime", "openvino", "tensorrt", "auto")
ORT_GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")
X86 = ("x86_64", "amd64", "i686", "x86")
DETECT = "detect"  # choose(): find out whether openvino is installed
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
    backend: Literal["onnxruntime", "tensorrt", "openvino"]
    providers: tuple[str, ...]  # ONNX Runtime's, best first; empty for the others
    reason: str
    device: str = ""  # OpenVINO's device; empty for the others


@dataclass(frozen=True, eq=False)
class CheckStrips:
    """The strips ``auto`` checks OpenVINO against ONNX Runtime on, and where they are from."""

    source: str  # "synthetic", or the folder of recorded strips (check_images)
    images: tuple[np.ndarray, ...]

    def __str__(self) -> str:
        if self.source == "synthetic":
            return f"{len(self.images)} synthetic strips"
        return f"{len(self.images)} strips from {self.source}"


@functools.cache
def synthetic_check_strips(count: int = 4, seed: int = 7) -> CheckStrips:
    """Synthetic strips, every one defective, so masks have something to agree on. Drawn once
    per process (0.1 s): every model and worker copy of a load checks on the same ones."""
    from itertools import islice

    from edge.vision.synthetic import strip_stream

    images = tuple(s.image for s in islice(strip_stream(seed, defect_rate=1.0), count))
    return CheckStrips("synthetic", images)


CHECK_STRIPS = 8  # at most, from a folder: enough windows to see masks move, a second to run
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def read_check_strips(folder: Path, count: int = CHECK_STRIPS) -> CheckStrips:
    """The first ``count`` images of a folder of recorded strips (by name), as they are."""
    import cv2

    images = []
    for path in sorted(folder.iterdir()):
        if len(images) == count:
            break
        if path.suffix.lower() in _IMAGE_SUFFIXES:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                raise BackendError(f"check_images: cannot read {path} as an image")
            images.append(image)
    if not images:
        raise BackendError(
            f"check_images: {folder} holds no strips ({', '.join(_IMAGE_SUFFIXES)} files)"
        )
    return CheckStrips(str(folder), tuple(images))


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
    options: OpenVinoOptions | None = None,
    openvino_version: str | None = DETECT,
    machine: str | None = None,
) -> Choice:
    """The backend to use and the reason, for the log line a plant engineer reads.

    An ``openvino`` choice made by ``auto`` still depends on each model's agreement check,
    which ``create`` runs as it loads the model (``choose`` only chooses).
    """
    options = options or OpenVinoOptions()
    if requested == "tensorrt":
        return Choice("tensorrt", (), "requested")
    if requested == "openvino":
        return Choice("openvino", (), f"requested; on {options.device}", options.device)
    providers = ort_providers(available)
    on = "on " + ", ".join(providers)
    if requested == "onnxruntime":
        return Choice("onnxruntime", providers, f"requested; {on}")
    facts = facts if facts is not None else detect_facts()
    if not facts.gpu_ready:
        why = f"TensorRT unavailable ({'; '.join(facts.problems) or 'no GPU'})"
        if providers == ("CPUExecutionProvider",):
            version = openvino.version() if openvino_version == DETECT else openvino_version
            arch = (machine or platform.machine()).lower()
            if version is not None and arch in X86:
                return Choice(
                    "openvino",
                    (),
                    f"{why}; OpenVINO {version} on this {arch} CPU ({options.device}), for "
                    "each model that agrees with ONNX Runtime FP32 on the check strips",
                    options.device,
                )
            if version is not None:
                why += f"; OpenVINO is installed but this is a {arch} CPU, not x86"
        return Choice("onnxruntime", providers, f"{why}; {on}")
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
    options: OpenVinoOptions | None = None,
    check: CheckStrips | None = None,
) -> Backend:
    """A backend for one model. ``fused``: ONNX Runtime runs the model inside its prologue and
    epilogue (``build_engine.graph``); a TensorRT engine is fused if it was built so (its
    ``fused`` attribute says which, whatever was asked); OpenVINO always runs it fused.
    ``check``: the strips ``auto`` checks OpenVINO on (default: synthetic ones)."""
    if requested not in BACKENDS:
        raise BackendError(f"unknown backend {requested!r}; use one of {list(BACKENDS)}")
    options = options or OpenVinoOptions()
    choice = choose(requested, engines=engines, facts=facts, options=options)
    backend: Backend | None = None
    if choice.backend == "openvino" and requested == "auto":
        backend, choice = _checked_openvino(
            files, sample_shape, max_batch, threads, options, check, choice
        )
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
    if backend is not None:
        return backend
    if choice.backend == "tensorrt":
        return _tensorrt(files, sample_shape, max_batch, engines, rebuild_stale, facts)
    if choice.backend == "openvino":
        from edge.vision.backends.openvino import OpenVinoBackend

        return OpenVinoBackend(
            files, sample_shape, max_batch=max_batch, threads=threads, options=options
        )
    return _onnxruntime(files, sample_shape, max_batch, threads, choice.providers, engines, fused)


def precise_twin(
    backend: Backend,
    files: ModelFiles,
    sample_shape: tuple[int, ...],
    max_batch: int,
    threads: int,
) -> Backend | None:
    """The same model in FP32 on the same runtime and device, beside a backend that runs it
    in reduced precision (OpenVINO bf16 or f16); None where ``backend`` is FP32 already.
    The cascade takes the scores that lie close to a gate from it."""
    from edge.vision.backends.openvino import OpenVinoBackend

    if not isinstance(backend, OpenVinoBackend) or backend.precision == "f32":
        return None
    options = dataclasses.replace(backend.options, precision="f32")
    return OpenVinoBackend(
        files, sample_shape, max_batch=max_batch, threads=threads, options=options
    )


def _onnxruntime(
    files: ModelFiles,
    sample_shape: tuple[int, ...],
    max_batch: int,
    threads: int,
    providers: Sequence[str],
    engines: Path | None,
    fused: bool,
) -> Backend:
    from edge.vision.backends.onnxruntime import OnnxRuntimeBackend

    return OnnxRuntimeBackend(
        files,
        sample_shape,
        max_batch=max_batch,
        threads=threads,
        providers=provider_options(tuple(providers), engines),
        fused=fused,
    )


# auto's verdicts per model file, OpenVINO settings and check strips: the copies of one load
# (and a reload of the same models) check once.
_VERDICTS: dict[tuple, Agreement] = {}
_VERDICTS_LOCK = threading.Lock()


def _checked_openvino(
    files: ModelFiles,
    sample_shape: tuple[int, ...],
    max_batch: int,
    threads: int,
    options: OpenVinoOptions,
    check: CheckStrips | None,
    choice: Choice,
) -> tuple[Backend | None, Choice]:
    """OpenVINO's backend if the model agrees with FP32 ONNX Runtime on the check strips;
    else no backend, and ONNX Runtime on the CPU with the reason."""
    from edge.vision.backends.openvino import OpenVinoBackend

    check = check or synthetic_check_strips()
    stat = files.onnx_path.stat()
    key = (str(files.onnx_path), stat.st_mtime_ns, files.spec, options.device,
           options.precision, check.source, openvino.version())  # fmt: skip
    cpu = ("CPUExecutionProvider",)
    try:
        candidate = OpenVinoBackend(
            files, sample_shape, max_batch=max_batch, threads=threads, options=options
        )
    except BackendError as err:
        return None, Choice("onnxruntime", cpu, f"OpenVINO cannot load the model ({err}); on CPU")
    with _VERDICTS_LOCK:
        verdict = _VERDICTS.get(key)
        if verdict is None:
            reference = _onnxruntime(files, sample_shape, max_batch, threads, cpu, None, True)
            try:
                bar = agreement.OPENVINO_MASK_IOU_MIN
                verdict = check_fused(files.spec, reference, candidate, check.images, bar)
            finally:
                reference.close()
            _VERDICTS[key] = verdict
    said = f"OpenVINO {candidate.precision} vs ONNX Runtime FP32 on {check}: {verdict}"
    if verdict.ok:
        return candidate, Choice("openvino", (), f"{choice.reason}; {said}", options.device)
    candidate.close()
    return None, Choice(
        "onnxruntime", cpu, f"{choice.reason}; but it disagrees: {said}; on CPUExecutionProvider"
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
