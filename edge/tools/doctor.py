"""`edge doctor`: what this machine can run, and whether each model and engine computes what the
FP32 ONNX model computes.

On a CPU machine it says so plainly, still runs every model in ONNX Runtime, and checks the FP16
ONNX (what TensorRT 11 builds from) against FP32 on the CPU. With a GPU it also runs one batch
through each TensorRT engine and compares it with ONNX Runtime.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from itertools import islice
from pathlib import Path

import numpy as np

from build_engine.machine import INSTALL_HINT, EnvFacts, detect_facts
from edge import __version__
from edge.vision.backends import auto
from edge.vision.backends.agreement import compare, make_batch
from edge.vision.backends.base import BackendError
from edge.vision.backends.engines import EngineError, locate, scan
from edge.vision.modelspec import ModelConfigError, ModelFiles, load_repository
from edge.vision.preprocess import InputAdapter
from edge.vision.replicas import on_gpu, plan_workers, usable_cores
from edge.vision.synthetic import strip_stream

Echo = Callable[[str], None]


def sample_images(count: int = 4, seed: int = 7) -> list[np.ndarray]:
    """Synthetic strips, all defective, so masks have something to agree on."""
    return [s.image for s in islice(strip_stream(seed, defect_rate=1.0), count)]


def run_doctor(
    models: Path,
    engines: Path | None,
    *,
    batch: int = 4,
    echo: Echo = print,
    facts: EnvFacts | None = None,
    images: list[np.ndarray] | None = None,
) -> int:
    """Print the report; 0 when every check that could run passed, 1 otherwise."""
    facts = facts if facts is not None else detect_facts()
    failures: list[str] = []
    _report_machine(facts, engines, echo)
    try:
        repository = load_repository(models)
    except ModelConfigError as err:
        echo(f"models: FAIL {err}")
        return 1
    images = images if images is not None else sample_images()
    for files in repository.values():
        failures += _check_model(files, images, batch, engines, facts, echo)
    if engines is not None:
        known = {f.spec.name for f in repository.values()}
        for entry in scan(engines):
            if entry.name not in known:
                echo(f"engine folder {engines / entry.name}: no model of that name in {models}")
    if failures:
        echo(f"result: FAIL ({len(failures)}): " + "; ".join(failures))
        return 1
    gpu_note = "" if facts.gpu_ready else " (TensorRT not checked: " + _why_no_trt(facts) + ")"
    echo(f"result: OK{gpu_note}")
    return 0


def _why_no_trt(facts: EnvFacts) -> str:
    return "; ".join(facts.problems) or "unknown"


def _report_machine(facts: EnvFacts, engines: Path | None, echo: Echo) -> None:
    import onnxruntime as ort

    echo(
        f"edge {__version__}, Python {platform.python_version()}, numpy {np.__version__}, "
        f"onnxruntime {ort.__version__} on {platform.machine()}"
    )
    echo(f"tensorrt: {facts.tensorrt_version or 'not available'}")
    echo(f"pycuda: {facts.pycuda_version or 'not available'}")
    if facts.gpu_name:
        echo(
            f"GPU: {facts.gpu_name}, compute capability {facts.compute_capability}, "
            f"CUDA driver {facts.cuda_driver_version}"
        )
    else:
        echo("GPU: none usable")
    for problem in facts.problems:
        echo(f"  - {problem}")
    if facts.tensorrt_version is None or facts.pycuda_version is None:
        echo(f"  to install the GPU packages: {INSTALL_HINT}")
    providers = auto.ort_providers()
    echo(f"backend onnxruntime: available, providers {', '.join(providers)}")
    if facts.gpu_ready:
        echo(f"backend tensorrt: available (TensorRT {facts.tensorrt_version} on {facts.gpu_name})")
    else:
        echo(f"backend tensorrt: not available: {_why_no_trt(facts)}")
    choice = auto.choose("auto", engines=engines, facts=facts)
    echo(f"backend auto: would use {choice.backend}: {choice.reason}")
    plan = plan_workers(0, 0, cores=usable_cores(), gpu=on_gpu(choice))
    echo(
        f"inference workers (workers = 0, threads = 0): {plan.workers} x "
        f"{plan.threads or 'default'} thread(s); {plan.reason}"
    )


def _check_model(
    files: ModelFiles,
    images: list[np.ndarray],
    batch: int,
    engines: Path | None,
    facts: EnvFacts,
    echo: Echo,
) -> list[str]:
    from edge.vision.backends.onnxruntime import OnnxRuntimeBackend

    spec = files.spec
    shape = InputAdapter(spec).sample_shape()
    echo(f"model {files.model_id} ({spec.role}) from {files.onnx_path}")
    try:
        reference = OnnxRuntimeBackend(files, shape, max_batch=batch, threads=0)
        inputs = make_batch(spec, images, min(batch, reference.max_batch))
        started = time.perf_counter()
        expected = reference.infer(inputs)
        took = (time.perf_counter() - started) * 1000
        reference.close()
        compare(spec, expected, expected)  # the output fits the config (classes, layout)
    except (BackendError, ValueError) as err:
        echo(f"  onnxruntime FP32: FAIL {err}")
        return [f"{spec.name}: onnxruntime"]
    echo(f"  onnxruntime FP32: ran a batch of {len(inputs)} in {took:.0f} ms")
    failures = _check_fp16(files, shape, inputs, expected, echo)
    if engines is not None:
        failures += _check_engine(files, shape, inputs, expected, engines, facts, echo)
    return failures


def _check_fp16(
    files: ModelFiles, shape: tuple[int, ...], inputs: np.ndarray, expected: np.ndarray, echo: Echo
) -> list[str]:
    from build_engine.fp16 import Fp16Error, convert_to_fp16
    from edge.vision.backends.onnxruntime import OnnxRuntimeBackend

    with tempfile.TemporaryDirectory(prefix="edge-doctor-") as tmp:
        try:
            fp16 = convert_to_fp16(files.onnx_path, Path(tmp) / "model.fp16.onnx")
        except Fp16Error as err:
            echo(f"  FP16 ONNX vs FP32: not checked: {err}")
            return []
        half = ModelFiles(spec=files.spec, onnx_path=fp16, version=files.version)
        try:
            backend = OnnxRuntimeBackend(half, shape, max_batch=len(inputs), threads=0)
            got = backend.infer(inputs)
            backend.close()
        except BackendError as err:
            echo(f"  FP16 ONNX vs FP32 (onnxruntime): FAIL {err}")
            return [f"{files.spec.name}: FP16 ONNX does not run"]
    agreement = compare(files.spec, expected, got)
    verdict = "OK" if agreement.ok else "FAIL"
    echo(f"  FP16 ONNX vs FP32 (onnxruntime, CPU): {verdict} {agreement}")
    return [] if agreement.ok else [f"{files.spec.name}: FP16 ONNX disagrees ({agreement})"]


def _check_engine(
    files: ModelFiles,
    shape: tuple[int, ...],
    inputs: np.ndarray,
    expected: np.ndarray,
    engines: Path,
    facts: EnvFacts,
    echo: Echo,
) -> list[str]:
    name = files.spec.name
    try:
        engine = locate(engines, files, facts)
    except EngineError as err:
        echo(f"  TensorRT engine: FAIL {err}")
        return [f"{name}: engine"]
    s = engine.sidecar
    echo(
        f"  TensorRT engine {engine.plan}: {s.precision}, TensorRT {s.tensorrt_version}, "
        f"batch <= {s.max_batch}, built {s.built_at}: matches this machine"
    )
    if not facts.gpu_ready:
        echo(f"  TensorRT engine: cannot run it here: {_why_no_trt(facts)}")
        return [f"{name}: engine not run (no TensorRT/GPU)"]
    from edge.vision.backends.tensorrt import TensorRTBackend

    try:
        backend = TensorRTBackend(files, engine, shape, max_batch=len(inputs))
        started = time.perf_counter()
        got = backend.infer(inputs[: backend.max_batch])
        took = (time.perf_counter() - started) * 1000
        backend.close()
    except BackendError as err:
        echo(f"  TensorRT engine vs onnxruntime: FAIL {err}")
        return [f"{name}: engine does not run"]
    agreement = compare(files.spec, expected[: len(got)], got)
    verdict = "OK" if agreement.ok else "FAIL"
    echo(f"  TensorRT engine vs onnxruntime FP32: {verdict} {agreement} ({took:.1f} ms)")
    return [] if agreement.ok else [f"{name}: engine disagrees ({agreement})"]
