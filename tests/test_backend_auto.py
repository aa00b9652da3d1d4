"""`--backend auto` and `tensorrt` on a machine without a GPU: the fallback and its reasons.

Here without OpenVINO (``openvino_version=None``, or its ``version`` patched to say so); auto's
choice of OpenVINO is tested in tests/test_backend_openvino.py."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs
from typer.testing import CliRunner

from edge.cli.main import app
from edge.vision.backends import auto, openvino
from edge.vision.backends.base import BackendError
from edge.vision.backends.engines import EnvFacts
from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
from edge.vision.cascade import Cascade
from edge.vision.modelspec import load_repository
from edge.vision.preprocess import InputAdapter
from tests.engine_fixtures import LINE_GPU

CPU = EnvFacts(None, None, None, problems=("the tensorrt package is not installed",))
NO_GPU = EnvFacts("10.3.0", None, None, "2025.1", problems=("no usable NVIDIA GPU: cuInit failed",))


def test_auto_falls_back_to_onnxruntime_and_says_tensorrt_is_missing() -> None:
    choice = auto.choose(
        "auto",
        engines=Path("engines"),
        facts=CPU,
        available=["CPUExecutionProvider"],
        openvino_version=None,
    )
    assert choice.backend == "onnxruntime"
    assert choice.providers == ("CPUExecutionProvider",)
    assert choice.reason == (
        "TensorRT unavailable (the tensorrt package is not installed); on CPUExecutionProvider"
    )


def test_auto_without_a_gpu_says_so() -> None:
    choice = auto.choose(
        "auto",
        engines=Path("engines"),
        facts=NO_GPU,
        available=["CPUExecutionProvider"],
        openvino_version=None,
    )
    assert choice.backend == "onnxruntime"
    assert "no usable NVIDIA GPU: cuInit failed" in choice.reason


def test_auto_with_a_gpu_but_no_engine_folder_stays_on_onnxruntime() -> None:
    choice = auto.choose("auto", engines=None, facts=LINE_GPU, available=["CPUExecutionProvider"])
    assert choice.backend == "onnxruntime"
    assert "no engine folder is configured (--engines" in choice.reason


def test_auto_with_a_gpu_and_engines_picks_tensorrt() -> None:
    choice = auto.choose("auto", engines=Path("engines"), facts=LINE_GPU, available=[])
    assert choice.backend == "tensorrt"
    assert choice.reason == "TensorRT 10.3.0, pycuda 2025.1 and Orin (sm 8.7) are available"


def test_onnxruntime_gpu_providers_come_first_when_installed() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    choice = auto.choose("auto", facts=CPU, available=available)
    assert choice.providers == tuple(available)
    assert choice.reason.endswith(
        "on TensorrtExecutionProvider, CUDAExecutionProvider, CPUExecutionProvider"
    )
    # ONNX Runtime's TensorRT provider only with somewhere to cache its engines, in FP16.
    assert auto.provider_options(choice.providers, None) == [
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
    ]
    with_cache = auto.provider_options(choice.providers, Path("/srv/engines"))
    assert with_cache[0] == (
        "TensorrtExecutionProvider",
        {
            "trt_fp16_enable": "True",
            "trt_engine_cache_enable": "True",
            "trt_engine_cache_path": "/srv/engines/onnxruntime-trt",
        },
    )


@pytest.fixture
def no_openvino(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(openvino, "version", lambda: None)


def test_auto_creates_an_onnxruntime_backend_and_logs_why(tiny_repo: Path, no_openvino) -> None:
    files = load_repository(tiny_repo)["classifier"]
    shape = InputAdapter(files.spec).sample_shape()
    with capture_logs() as logs:
        backend = auto.create("auto", files, shape, max_batch=4, threads=1, facts=CPU)
    assert isinstance(backend, OnnxRuntimeBackend)
    backend.close()
    (line,) = [e for e in logs if e["event"] == "backend chosen"]
    assert line["backend"] == "onnxruntime" and line["requested"] == "auto"
    assert "the tensorrt package is not installed" in line["reason"]


@pytest.mark.parametrize(
    ("engines", "facts", "message"),
    [
        (None, LINE_GPU, "the TensorRT backend needs an engine folder (--engines"),
        (
            Path("engines"),
            CPU,
            "the TensorRT backend cannot run here: the tensorrt package is not installed. Install: pip install 'edge[gpu]'",
        ),
        (Path("engines"), NO_GPU, "the TensorRT backend needs an NVIDIA GPU: no usable NVIDIA GPU"),
    ],
)
def test_tensorrt_requested_where_it_cannot_run_is_refused_clearly(
    tiny_repo: Path, engines: Path | None, facts: EnvFacts, message: str
) -> None:
    files = load_repository(tiny_repo)["segmenter"]
    shape = InputAdapter(files.spec).sample_shape()
    with pytest.raises(BackendError) as err:
        auto.create("tensorrt", files, shape, max_batch=4, threads=1, engines=engines, facts=facts)
    assert message in str(err.value)


def test_cascade_with_auto_runs_on_onnxruntime_without_openvino(
    tiny_repo: Path, tmp_path: Path, no_openvino
) -> None:
    cascade = Cascade.load(tiny_repo, "auto", max_batch=4, threads=1, engines=tmp_path)
    try:
        assert cascade.classifier.backend.name == "onnxruntime"
    finally:
        cascade.close()


def test_edge_run_with_tensorrt_on_this_machine_exits_with_the_reason(
    tiny_repo: Path, tmp_path: Path
) -> None:
    args = ["run", "--bind-source", "tcp://127.0.0.1:*", "--publish", "tcp://127.0.0.1:*"]
    args += ["--models", str(tiny_repo), "--backend", "tensorrt", "--engines", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "error: the TensorRT backend" in result.output


def test_an_unknown_backend_is_a_config_error(tiny_repo: Path) -> None:
    args = ["run", "--bind-source", "tcp://127.0.0.1:*", "--models", str(tiny_repo)]
    result = CliRunner().invoke(app, [*args, "--backend", "cuda"])
    assert result.exit_code == 2
    assert (
        "backend" in result.output
        and "'onnxruntime', 'openvino', 'tensorrt' or 'auto'" in result.output
    )
