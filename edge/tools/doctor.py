"""`edge doctor`: what this machine can run, and whether each model and engine computes what the
FP32 ONNX model computes.

On a CPU machine it says so plainly, still runs every model in ONNX Runtime, and checks the FP16
ONNX (what TensorRT 11 builds from) against FP32 on the CPU. Where openvino is installed it runs
every model on OpenVINO's device and precision and compares it with FP32 ONNX Runtime on the
check strips, as ``--backend auto`` does before it serves a model on OpenVINO. With a GPU it
also runs one batch through each TensorRT engine and compares it with ONNX Runtime.
"""

from __future__ import annotations

import platform
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from build_engine.machine import INSTALL_HINT, EnvFacts, detect_facts
from edge import __version__
from edge.vision.backends import agreement, auto, openvino
from edge.vision.backends.agreement import check_fused, compare, make_batch
from edge.vision.backends.base import BackendError
from edge.vision.backends.engines import EngineError, locate, scan
from edge.vision.backends.openvino import OpenVinoOptions
from edge.vision.modelspec import ModelConfigError, ModelFiles, load_repository
from edge.vision.preprocess import InputAdapter
from edge.vision.replicas import plan_for_choice
from edge.vision.stage import RECHECK_MARGIN

Echo = Callable[[str], None]


def run_doctor(
    models: Path,
    engines: Path | None,
    *,
    batch: int = 4,
    echo: Echo = print,
    facts: EnvFacts | None = None,
    check: auto.CheckStrips | None = None,
    options: OpenVinoOptions | None = None,
) -> int:
    """Print the report; 0 when every check that could run passed, 1 otherwise.

    ``check``: the strips the models are compared on (default: synthetic ones, every one
    defective); ``options``: OpenVINO's device and precision, as the daemon's config has them.
    """
    facts = facts if facts is not None else detect_facts()
    options = options or OpenVinoOptions()
    failures: list[str] = []
    _report_machine(facts, engines, options, echo)
    try:
        repository = load_repository(models)
    except ModelConfigError as err:
        echo(f"models: FAIL {err}")
        return 1
    check = check or auto.synthetic_check_strips()
    images = list(check.images)
    for files in repository.values():
        failures += _check_model(files, images, batch, engines, facts, echo)
        if openvino.version() is not None:
            failures += _check_openvino(files, check, options, echo)
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


def _report_machine(
    facts: EnvFacts, engines: Path | None, options: OpenVinoOptions, echo: Echo
) -> None:
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
    _report_openvino(options, echo)
    choice = auto.choose("auto", engines=engines, facts=facts, options=options)
    echo(f"backend auto: would use {choice.backend}: {choice.reason}")
    plan = plan_for_choice(choice, 0, 0)
    echo(
        f"inference workers (workers = 0, threads = 0): {plan.workers} x "
        f"{plan.threads or 'default'} thread(s); {plan.reason}"
    )


def _report_openvino(options: OpenVinoOptions, echo: Echo) -> None:
    version = openvino.version()
    if version is None:
        echo(f"backend openvino: not available: not installed ({openvino.INSTALL_HINT})")
        return
    core = openvino.core()
    for device in openvino.devices():
        name = core.get_property(device, "FULL_DEVICE_NAME")
        capabilities = ", ".join(core.get_property(device, "OPTIMIZATION_CAPABILITIES"))
        echo(f"openvino {version}: device {device}: {name} ({capabilities})")
    echo(
        f"backend openvino: available on {options.device}, precision {options.precision}"
        + (" (the device's default)" if options.precision == "auto" else "")
    )


def _check_openvino(
    files: ModelFiles, check: auto.CheckStrips, options: OpenVinoOptions, echo: Echo
) -> list[str]:
    """The model on OpenVINO against FP32 ONNX Runtime, both fused, on the check strips."""
    from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
    from edge.vision.backends.openvino import OpenVinoBackend

    shape = InputAdapter(files.spec).sample_shape()
    try:
        candidate = OpenVinoBackend(files, shape, max_batch=8, options=options)
        reference = OnnxRuntimeBackend(files, shape, max_batch=8, threads=0, fused=True)
        started = time.perf_counter()
        verdict = check_fused(
            files.spec, reference, candidate, check.images, agreement.OPENVINO_MASK_IOU_MIN
        )
        took = time.perf_counter() - started
    except BackendError as err:
        echo(f"  OpenVINO: FAIL {err}")
        return [f"{files.spec.name}: OpenVINO does not run"]
    where = f"{options.device} {candidate.precision}"
    reduced = candidate.precision != "f32"
    candidate.close()
    reference.close()
    echo(
        f"  OpenVINO {where} vs onnxruntime FP32 on {check}: "
        f"{'OK' if verdict.ok else 'FAIL'} {verdict} ({took:.1f} s for both)"
    )
    if reduced:  # what the daemon adds to keep FP32's defects (docs/openvino.md)
        echo("  its input stem (through the first convolution) runs in f32")
        if files.spec.role == "classifier":
            echo(f"  windows scoring within {RECHECK_MARGIN} of a gate are rescored in f32")
    return [] if verdict.ok else [f"{files.spec.name}: OpenVINO {where} disagrees ({verdict})"]


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
