"""The engine build step: what runs on the CPU (FP16 ONNX, model discovery, parser error
reports, the missing-tensorrt message) for real; the TensorRT build itself on a GPU only."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from build_engine.build import (
    BuildError,
    BuildOptions,
    ParserProblem,
    build_model,
    describe_parser_problems,
    find_models,
)
from build_engine.fp16 import convert_to_fp16
from edge.backends.agreement import MASK_IOU_MIN, SCORE_TOLERANCE, compare, make_batch
from edge.backends.engines import locate
from edge.backends.onnxruntime import OnnxRuntimeBackend
from edge.camera import load_strip
from edge.config import shipped_models
from edge.main import app
from edge.modelspec import ModelConfigError, ModelFiles, load_repository
from edge.preprocess import InputAdapter
from edge.synthetic import strip_stream
from tests.gpu import gpu_facts, requires_gpu

REPO_ROOT = Path(__file__).resolve().parents[1]
no_tensorrt = pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None, reason="tensorrt is installed here"
)


def run_fp32_and_fp16(
    files: ModelFiles, batch: np.ndarray, tmp: Path
) -> tuple[np.ndarray, np.ndarray]:
    shape = InputAdapter(files.spec).sample_shape()
    half_path = convert_to_fp16(files.onnx_path, tmp / f"{files.spec.name}.fp16.onnx")
    half = ModelFiles(spec=files.spec, onnx_path=half_path, version=files.version)
    outputs = []
    for model in (files, half):
        backend = OnnxRuntimeBackend(model, shape, max_batch=len(batch), threads=1)
        outputs.append(backend.infer(batch))
        backend.close()
    return outputs[0], outputs[1]


def test_fp16_onnx_keeps_float32_io_and_stores_float16_weights(tmp_path: Path) -> None:
    for files in load_repository(shipped_models()).values():
        out = convert_to_fp16(files.onnx_path, tmp_path / f"{files.spec.name}.onnx")
        model = onnx.load(str(out))
        float_ = onnx.TensorProto.FLOAT
        assert [i.type.tensor_type.elem_type for i in model.graph.input] == [float_]
        assert [o.type.tensor_type.elem_type for o in model.graph.output] == [float_]
        kinds = {t.data_type for t in model.graph.initializer}
        assert onnx.TensorProto.FLOAT16 in kinds, files.model_id
        assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.parametrize("repository", ["tiny", "shipped"])
def test_fp16_onnx_agrees_with_fp32_on_synthetic_strips(
    repository: str, tiny_repo: Path, tmp_path: Path
) -> None:
    root = tiny_repo if repository == "tiny" else shipped_models()
    images = [s.image for s, _ in zip(strip_stream(3, defect_rate=1.0), range(3), strict=False)]
    for files in load_repository(root).values():
        batch = make_batch(files.spec, images, 21)
        fp32, fp16 = run_fp32_and_fp16(files, batch, tmp_path)
        agreement = compare(files.spec, fp32, fp16)
        assert agreement.ok, f"{files.model_id}: {agreement}"
        if files.spec.role == "segmenter":
            assert agreement.mask_pixels > 0  # the check compared real masks, not two empties


def test_fp16_onnx_agrees_with_fp32_on_real_severstal_strips(
    severstal: Path, tmp_path: Path
) -> None:
    """The acceptance bar for FP16: scores within 1e-2, thresholded masks IoU >= 0.99."""
    images = [load_strip(p) for p in sorted((severstal / "images").iterdir())]
    assert images
    for files in load_repository(shipped_models()).values():
        batch = make_batch(files.spec, images, 7 * len(images))
        fp32, fp16 = run_fp32_and_fp16(files, batch, tmp_path)
        agreement = compare(files.spec, fp32, fp16)
        if files.spec.role == "classifier":
            assert agreement.max_abs_diff <= SCORE_TOLERANCE, str(agreement)
        else:
            assert agreement.mask_pixels > 0
            assert agreement.mask_iou >= MASK_IOU_MIN, str(agreement)


@no_tensorrt
def test_python_m_build_engine_without_tensorrt_fails_saying_how_to_install(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "build_engine", "models/classifier", "models/segmenter",
         "--out", str(tmp_path / "engines"), "--fp16", "--max-batch", "32"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "tensorrt is not installed" in result.stderr
    assert "pip install 'edge[gpu]' --extra-index-url https://pypi.nvidia.com" in result.stderr
    assert not (tmp_path / "engines").exists()


@no_tensorrt
def test_edge_build_without_tensorrt_fails_the_same_way(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["build", str(shipped_models()), "--out", str(tmp_path)])
    assert result.exit_code == 1
    assert "tensorrt is not installed" in result.output
    assert "edge[gpu]" in result.output


def test_models_are_found_from_a_repository_a_folder_or_an_onnx_file(tiny_repo: Path) -> None:
    assert sorted(f.spec.name for f in find_models([tiny_repo])) == ["classifier", "segmenter"]
    (seg,) = find_models([tiny_repo / "segmenter"])
    (cls,) = find_models([tiny_repo / "classifier" / "1" / "model.onnx"])
    assert (seg.spec.role, cls.spec.role) == ("segmenter", "classifier")
    with pytest.raises(ModelConfigError, match="named more than once"):
        find_models([tiny_repo, tiny_repo / "segmenter"])
    with pytest.raises(ModelConfigError, match="does not exist"):
        find_models([tiny_repo / "nope"])


def test_batch_profile_is_checked() -> None:
    assert BuildOptions(max_batch=16).profile() == (1, 16, 16)
    assert BuildOptions(max_batch=32, opt_batch=8).profile() == (1, 8, 32)
    with pytest.raises(BuildError, match=r"1 <= min \(1\) <= opt \(64\) <= max \(32\)"):
        BuildOptions(max_batch=32, opt_batch=64).profile()


def test_parser_errors_list_the_unsupported_nodes() -> None:
    problems = [
        ParserProblem("UNSUPPORTED_NODE", 12, "/up/Resize", "Resize", "unsupported mode cubic"),
        ParserProblem("UNSUPPORTED_NODE", 40, "/head/GridSample_1", "GridSample", "no importer"),
        ParserProblem("INVALID_GRAPH", -1, "", "", "graph has 2 errors"),
    ]
    text = describe_parser_problems(Path("seg.onnx"), problems)
    assert text.splitlines()[0] == "TensorRT cannot parse seg.onnx:"
    assert (
        "unsupported nodes: GridSample (node /head/GridSample_1), Resize (node /up/Resize)" in text
    )
    assert "UNSUPPORTED_NODE at node 12 '/up/Resize' (Resize): unsupported mode cubic" in text
    assert "  - INVALID_GRAPH: graph has 2 errors" in text


@requires_gpu
@pytest.mark.parametrize("repository", ["tiny", "shipped"])
def test_gpu_builds_engines_with_sidecars_that_match_this_machine(
    repository: str, tiny_repo: Path, tmp_path: Path
) -> None:
    root = tiny_repo if repository == "tiny" else shipped_models()
    options = BuildOptions(max_batch=8, workspace_mib=1024)
    for files in load_repository(root).values():
        built = build_model(files, tmp_path, options)
        assert built.sidecar.max_batch == 8
        assert locate(tmp_path, files, gpu_facts()).plan == built.plan
    assert (tmp_path / "timing.cache").stat().st_size > 0


def test_float16_outputs_are_cast_back_to_float32() -> None:
    from onnx import TensorProto, helper

    from build_engine.fp16 import _float32_outputs

    # A Cast producer (what the converter leaves after a Resize) is re-pointed at float32; any
    # other producer gets a Cast appended.
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["x"], ["a"], to=TensorProto.FLOAT16),
            helper.make_node("Identity", ["a"], ["b"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT16, [1]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT16, [1]),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    _float32_outputs(model, onnx)
    onnx.checker.check_model(model)
    assert [o.type.tensor_type.elem_type for o in model.graph.output] == [TensorProto.FLOAT] * 2
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    a, b = session.run(None, {"x": np.array([1.5], np.float32)})
    assert a.dtype == np.float32 and b.dtype == np.float32 and b[0] == 1.5
