"""`edge doctor` on a machine without a GPU: it says so, and still checks every model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.tools.doctor import run_doctor
from edge.vision.backends import openvino
from edge.vision.backends.engines import EnvFacts
from edge.vision.modelspec import load_repository
from edge.vision.replicas import usable_cores
from tests.engine_fixtures import fake_engine
from tests.test_cli_consistency import flat

CPU = EnvFacts(None, None, None, problems=("the tensorrt package is not installed",))


def report(models: Path, engines: Path | None = None, facts: EnvFacts = CPU) -> tuple[int, str]:
    lines: list[str] = []
    code = run_doctor(models, engines, batch=4, echo=lines.append, facts=facts)
    return code, "\n".join(lines)


def test_doctor_reports_no_gpu_and_checks_every_model_in_fp16(tiny_repo: Path) -> None:
    code, text = report(tiny_repo)
    assert code == 0, text
    assert "GPU: none usable" in text
    assert "backend tensorrt: not available: the tensorrt package is not installed" in text
    if openvino.version() is None:
        assert "backend auto: would use onnxruntime" in text
    else:  # the test extra installs it: auto would use it, model by model, once checked
        assert "backend auto: would use openvino" in text
        assert text.count("vs onnxruntime FP32 on 4 synthetic strips: OK") == 2
        if "CPU bf16 vs" in text:  # what keeps bf16's defects FP32's is said
            assert text.count("its input stem (through the first convolution) runs in f32") == 2
            assert "windows scoring within 0.04 of a gate are rescored in f32" in text
    cores = usable_cores()
    per_core = 2 if "backend auto: would use openvino" in text else 1  # OpenVINO's streams
    want = min(cores * per_core, 4)
    assert f"inference workers (workers = 0, threads = 0): {want} x " in text
    assert "pip install 'edge[gpu]'" in text
    for name in ("classifier", "segmenter"):
        assert f"model {name}:1:" in text
    assert text.count("onnxruntime FP32: ran a batch of 4") == 2
    assert text.count("FP16 ONNX vs FP32 (onnxruntime, CPU): OK") == 2
    assert "mask IoU" in text and "max |score diff|" in text
    assert text.splitlines()[-1].startswith("result: OK (TensorRT not checked")


def test_doctor_names_the_stale_engine_field_and_fails(tiny_repo: Path, tmp_path: Path) -> None:
    for files in load_repository(tiny_repo).values():
        fake_engine(tmp_path, files)  # built on "Orin" with TensorRT 10.3.0
    code, text = report(tiny_repo, tmp_path)
    assert code == 1
    assert "TensorRT engine: FAIL" in text
    assert "tensorrt_version: the engine has '10.3.0'" in text
    assert text.splitlines()[-1].startswith("result: FAIL (2)")


def test_doctor_on_matching_engines_without_a_gpu_says_it_cannot_run_them(
    tiny_repo: Path, tmp_path: Path
) -> None:
    no_gpu_here = EnvFacts(
        "10.3.0", "Orin", "8.7", None, problems=("the pycuda package is not installed",)
    )
    for files in load_repository(tiny_repo).values():
        fake_engine(tmp_path, files)
    code, text = report(tiny_repo, tmp_path, no_gpu_here)
    assert code == 1
    assert "matches this machine" in text
    assert "cannot run it here: the pycuda package is not installed" in text


def test_doctor_reports_a_broken_model_repository(tmp_path: Path) -> None:
    code, text = report(tmp_path)
    assert code == 1
    assert "models: FAIL" in text and "has no classifier" in text


def test_edge_doctor_command(tiny_repo: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", "--models", str(tiny_repo), "--batch", "2"])
    assert result.exit_code == 0, result.output
    assert "backend onnxruntime: available" in result.output
    assert "result: OK" in result.output


def test_doctor_checks_each_model_on_openvino_against_onnxruntime(severstal: Path) -> None:
    if openvino.version() is None:
        pytest.skip("openvino is not installed (pip install 'edge[openvino]')")
    args = ["doctor", "--check-images", str(severstal / "images"), "--openvino-precision", "f32"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"openvino {openvino.version()}: device CPU:" in result.output
    assert "backend openvino: available on CPU, precision f32" in result.output
    for name in ("classifier", "segmenter"):
        assert re.search(rf"^model {name}:\d+:[0-9a-f]{{12}} \({name}\)", result.output, re.M)
    said = [line for line in result.output.splitlines() if "OpenVINO CPU f32 vs onnx" in line]
    assert len(said) == 2, result.output
    assert all(f"on 8 strips from {severstal / 'images'}: OK" in line for line in said)
    assert "mask IoU 1.0000" in said[1] or "mask IoU 0.999" in said[1], said[1]


def test_doctor_names_a_bad_precision() -> None:
    result = CliRunner().invoke(app, ["doctor", "--openvino-precision", "int4"])
    assert result.exit_code == 2
    said = flat(result.output)
    assert "'--openvino-precision': must be one of auto, f32, bf16, f16; got 'int4'" in said
