"""The engine build step: what runs on the CPU (FP16 ONNX, model discovery, parser error
reports, the missing-tensorrt message) for real; the TensorRT build itself on a GPU only."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import pytest
from typer.testing import CliRunner

from build_engine.build import (
    FUSED_FILE,
    BuildError,
    BuildOptions,
    ParserProblem,
    build_model,
    describe_parser_problems,
    hold_in_fp32,
)
from build_engine.fp16 import convert_to_fp16, stem_nodes
from build_engine.models import ModelError
from build_engine.models import find_models as read_models
from edge.cli.gpu import find_models
from edge.cli.main import app
from edge.daemon.config import shipped_models
from edge.line.camera import load_strip
from edge.vision.backends.agreement import (
    MASK_IOU_MIN,
    SCORE_TOLERANCE,
    AgreementCounts,
    compare,
    make_batch,
)
from edge.vision.backends.engines import locate, model_facts, sidecar_spec
from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
from edge.vision.modelspec import ModelConfigError, ModelFiles, ModelSpec, load_repository
from edge.vision.preprocess import InputAdapter
from edge.vision.synthetic import strip_stream
from tests.engine_fixtures import LINE_GPU, fake_engine
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


def test_fp16_conversion_does_not_warn_per_truncated_weight(tmp_path: Path) -> None:
    # The shipped models hold weights under FP16's smallest normal; the converter warned once
    # for each, on every `edge doctor` and `edge build`.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for files in load_repository(shipped_models()).values():
            convert_to_fp16(files.onnx_path, tmp_path / f"{files.spec.name}.onnx")
    assert not [w for w in caught if "will be truncated" in str(w.message)]


def test_fp16_onnx_keeps_each_models_input_stem_in_float32(tmp_path: Path) -> None:
    for files in load_repository(shipped_models()).values():
        stem = stem_nodes(onnx.load(str(files.onnx_path)).graph)
        half = onnx.load(str(convert_to_fp16(files.onnx_path, tmp_path / "half.onnx")))
        weights = {t.name: t.data_type for t in half.graph.initializer}
        first, second = [n for n in half.graph.node if n.op_type == "Conv"][:2]
        assert first.name in stem and second.name not in stem, files.model_id
        assert weights[first.input[1]] == onnx.TensorProto.FLOAT, files.model_id
        assert weights[second.input[1]] == onnx.TensorProto.FLOAT16, files.model_id


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
    """The acceptance bar for FP16: scores within 1e-2, thresholded masks IoU >= 0.99.

    EDGE_AGREEMENT_IMAGES=<folder> runs it on another folder (the 148 strips of
    severstal_train); one strip's tiles at a time, so memory stays one strip's maps."""
    folder = Path(os.environ.get("EDGE_AGREEMENT_IMAGES", severstal / "images"))
    paths = sorted(folder.iterdir())
    assert paths
    for files in load_repository(shipped_models()).values():
        shape = InputAdapter(files.spec).sample_shape()
        half_path = convert_to_fp16(files.onnx_path, tmp_path / f"{files.spec.name}.fp16.onnx")
        half = ModelFiles(spec=files.spec, onnx_path=half_path, version=files.version)
        backends = [OnnxRuntimeBackend(m, shape, max_batch=7, threads=1) for m in (files, half)]
        counts = AgreementCounts(files.spec)
        for path in paths:
            batch = make_batch(files.spec, [load_strip(path)], 7)
            counts.add(backends[0].infer(batch), backends[1].infer(batch), fused=False)
        for backend in backends:
            backend.close()
        agreement = counts.agreement()
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


def test_python_m_build_engine_reads_the_models_as_edge_build_does(
    tiny_repo: Path, tmp_path: Path
) -> None:
    """build_engine's own reader (no edge) gives the build the facts edge gives it."""
    bare = tmp_path / "copied.onnx"  # no config.toml: the config is read from the metadata
    bare.write_bytes(load_repository(shipped_models())["classifier"].onnx_path.read_bytes())
    for paths in (
        [tiny_repo],
        [tiny_repo / "segmenter"],
        [tiny_repo / "classifier" / "1" / "model.onnx"],
        [shipped_models()],
        [bare],
    ):
        edge_files = find_models(paths)
        own = read_models(paths)
        # Only edge knows what a config means for the fused pre/post-processing: its engines
        # are built fused, build_engine's own are the models as they are.
        assert all(m.graph is None for m in own)
        assert all(model_facts(f).graph is not None for f in edge_files)
        assert [dataclasses.replace(m, spec={}) for m in own] == [
            dataclasses.replace(model_facts(f), spec={}, graph=None) for f in edge_files
        ], paths
        # The config is recorded as written; edge reads it back into the same ModelSpec.
        assert [ModelSpec.model_validate(m.spec) for m in own] == [f.spec for f in edge_files]
    assert read_models([bare])[0].name == "classifier" and read_models([bare])[0].config is None
    with pytest.raises(ModelError, match="named more than once"):
        read_models([tiny_repo, tiny_repo / "segmenter"])
    with pytest.raises(ModelError, match="does not exist"):
        read_models([tiny_repo / "nope"])
    roleless = tmp_path / "roleless"
    (roleless / "1").mkdir(parents=True)
    (roleless / "1" / "model.onnx").write_bytes(bare.read_bytes())
    (roleless / "config.toml").write_text('classes = ["a"]\n')
    with pytest.raises(ModelError, match=r"roleless/config\.toml: role is missing"):
        read_models([roleless])


# A fresh interpreter in which edge cannot be imported: build_engine must not need it.
WITHOUT_EDGE = """
import hashlib, importlib, importlib.abc, json, pkgutil, sys
from pathlib import Path


class NoEdge(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "edge" or name.startswith("edge."):
            raise ImportError(f"{name} is made unimportable by this test")
        return None


sys.meta_path.insert(0, NoEdge())
try:
    import edge  # noqa: F401
except ImportError:
    pass
else:
    raise SystemExit("edge was importable")

import build_engine

modules = sorted(m.name for m in pkgutil.iter_modules(build_engine.__path__, "build_engine."))
for module in modules:
    importlib.import_module(module)

import onnx
from build_engine.fp16 import convert_to_fp16
from build_engine.models import find_models
from build_engine.sidecar import SIDECAR_FILE, Sidecar, TensorInfo, file_sha256, write_engine

repo, out = Path(sys.argv[1]), Path(sys.argv[2])
(model,) = find_models([repo / "segmenter"])
half = onnx.load(str(convert_to_fp16(model.onnx_path, out / "model.fp16.onnx")))
plan = b"a plan built without edge"
sidecar = Sidecar(
    model=model.name, version=model.version, role=model.role,
    source_onnx=str(model.onnx_path), source_sha256=model.sha256,
    built_onnx_sha256=file_sha256(out / "model.fp16.onnx"),
    engine_sha256=hashlib.sha256(plan).hexdigest(),
    tensorrt_version="10.3.0", gpu_name="Orin", compute_capability="8.7",
    precision="fp16", network="weakly-typed", min_batch=1, opt_batch=32, max_batch=32,
    workspace_mib=4096,
    io=[TensorInfo(name="image", mode="input", shape=[-1, 1, 256, 256], dtype="float32")],
    built_at="2025-01-01T00:00:00+00:00", build_seconds=1.0, spec=model.spec,
)
built = write_engine(out / "engines", plan, sidecar, config=model.config)
back = Sidecar.from_json(built.sidecar_path.read_text())
print(json.dumps({
    "modules": modules,
    "edge_loaded": sorted(m for m in sys.modules if m == "edge" or m.startswith("edge.")),
    "io_types": [v.type.tensor_type.elem_type for v in [*half.graph.input, *half.graph.output]],
    "initializer_types": sorted({t.data_type for t in half.graph.initializer}),
    "round_trip": back == sidecar,
    "plan": str(built.plan),
}))
"""


def test_build_engine_imports_and_works_where_edge_cannot_be_imported(
    tiny_repo: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_EDGE, str(tiny_repo), str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    every = ("__main__", "build", "cli", "fp16", "machine", "models", "sidecar")
    assert {f"build_engine.{m}" for m in every} <= set(report["modules"])
    assert report["edge_loaded"] == []
    assert report["io_types"] == [onnx.TensorProto.FLOAT] * 2
    # The tiny segmenter is one convolution: all of it is its input stem, kept float32.
    assert report["initializer_types"] == [onnx.TensorProto.FLOAT]
    assert report["round_trip"] is True
    # edge reads what the standalone build step wrote, and finds it matches the model.
    files = load_repository(tiny_repo)["segmenter"]
    found = locate(tmp_path / "engines", files, LINE_GPU)
    assert str(found.plan) == report["plan"]
    assert sidecar_spec(found.sidecar) == files.spec
    assert (tmp_path / "engines" / "segmenter" / "config.toml").is_file()


def test_edge_build_hands_the_build_the_models_as_edge_reads_them(
    tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = load_repository(tiny_repo)
    calls = []

    def build_model(model, out, options):  # stands in for TensorRT, which is not here
        calls.append((model, out, options.max_batch))
        return fake_engine(out, repo[model.role], LINE_GPU)

    monkeypatch.setattr("build_engine.cli.require_tensorrt", lambda: None)
    monkeypatch.setattr("build_engine.cli.build_model", build_model)
    args = ["build", str(tiny_repo), "--out", str(tmp_path), "--max-batch", "8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert calls == [(model_facts(f), tmp_path, 8) for f in find_models([tiny_repo])]
    assert "TensorRT 10.3.0 on Orin (sm 8.7)" in result.output


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
        built = build_model(model_facts(files), tmp_path, options)
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


class _Layer:
    """What hold_in_fp32 reads and sets of a TensorRT layer."""

    def __init__(self, name: str, dtype: str) -> None:
        self.name, self.num_outputs, self.dtype = name, 1, dtype
        self.precision: str | None = None
        self.output_types: dict[int, str] = {}

    def get_output(self, index: int) -> Any:
        return SimpleNamespace(dtype=self.dtype)

    def set_output_type(self, index: int, dtype: str) -> None:
        self.output_types[index] = dtype


def test_tensorrt_10_holds_the_input_stem_in_fp32_by_layer_name() -> None:
    graph = onnx.load(str(load_repository(shipped_models())["segmenter"].onnx_path)).graph
    shapes = {"Shape", "Gather", "Unsqueeze", "Concat", "Cast"}  # int64 shape arithmetic here
    layers = [_Layer(n.name, "int64" if n.op_type in shapes else "float32") for n in graph.node]
    layers.append(_Layer("/stem/stem.0/Conv_bias_add", "float32"))  # a node parsed as 2 layers
    network = SimpleNamespace(num_layers=len(layers), get_layer=layers.__getitem__)
    trt = SimpleNamespace(float32="float32", float16="float16")
    held = hold_in_fp32(trt, network, set(stem_nodes(graph)))  # type: ignore[arg-type]
    assert held == ["/stem/stem.0/Conv", "/stem/stem.2/Relu", "/stem/stem.0/Conv_bias_add"]
    for layer in layers:
        wanted = "float32" if layer.name in held else None
        assert layer.precision == wanted and layer.output_types.get(0) == wanted, layer.name


def test_tensorrt_11_builds_from_the_fused_graph_in_fp16(
    tiny_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Strongly typed TensorRT parses the FP16 copy of what it would parse in FP32: the model
    inside its prologue and epilogue (uint8 tiles in), not the bare model."""
    parsed: list[Path] = []

    def build(trt, model, onnx_path, options, strongly_typed, cache_path):  # no TensorRT here
        parsed.append(onnx_path)
        return b"plan", [], None

    monkeypatch.setattr(
        "build_engine.build.require_tensorrt", lambda: SimpleNamespace(__version__="11.0.0")
    )
    monkeypatch.setattr("build_engine.build._build", build)
    files = load_repository(tiny_repo)["segmenter"]
    facts = model_facts(files)
    assert facts.graph is not None  # the tiny segmenter is fused for TensorRT
    build_model(facts, tmp_path, BuildOptions(max_batch=8), facts=LINE_GPU)
    (path,) = parsed
    assert path.name == "model.fp16.onnx"
    graph = onnx.load(str(path)).graph
    assert [i.type.tensor_type.elem_type for i in graph.input] == [onnx.TensorProto.UINT8]
    fused = onnx.load(str(path.parent / FUSED_FILE)).graph  # what TensorRT 10 parses
    assert [o.type.tensor_type.elem_type for o in graph.output] == [
        o.type.tensor_type.elem_type for o in fused.output
    ]
