"""The TensorRT backend. On a GPU machine: engines built from the models agree with ONNX Runtime
and run the whole daemon. Here: only that it refuses clearly."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from build_engine.build import BuildOptions, build_model
from build_engine.sidecar import SIDECAR_FILE
from edge.daemon.config import shipped_models
from edge.vision.backends.agreement import compare, make_batch
from edge.vision.backends.base import BackendError
from edge.vision.backends.engines import StaleEngine, locate, model_facts
from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
from edge.vision.backends.tensorrt import TensorRTBackend, import_gpu
from edge.vision.cascade import Cascade
from edge.vision.modelspec import load_repository
from edge.vision.preprocess import InputAdapter
from edge.vision.synthetic import strip_stream
from tests.engine_fixtures import fake_engine
from tests.gpu import gpu_facts, requires_gpu


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None
    and importlib.util.find_spec("pycuda") is not None,
    reason="tensorrt and pycuda are installed here",
)
def test_without_the_gpu_packages_the_backend_says_what_to_install(
    tiny_repo: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        BackendError,
        match=r"needs (tensorrt|pycuda), which is not installed: pip install 'edge\[gpu\]'",
    ):
        import_gpu()
    files = load_repository(tiny_repo)["classifier"]
    engine = fake_engine(tmp_path, files)
    with pytest.raises(BackendError, match="which is not installed"):
        TensorRTBackend(files, engine, InputAdapter(files.spec).sample_shape())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("engines")
    for files in load_repository(shipped_models()).values():
        build_model(model_facts(files), out, BuildOptions(max_batch=16, workspace_mib=1024))
    return out


@requires_gpu
@pytest.mark.parametrize("batch_size", [1, 5, 16])
def test_gpu_engines_agree_with_onnxruntime(built: Path, batch_size: int) -> None:
    images = [s.image for s, _ in zip(strip_stream(5, defect_rate=1.0), range(3), strict=False)]
    for files in load_repository(shipped_models()).values():
        shape = InputAdapter(files.spec).sample_shape()
        batch = make_batch(files.spec, images, batch_size)
        reference = OnnxRuntimeBackend(files, shape, max_batch=batch_size, threads=0)
        engine = TensorRTBackend(files, locate(built, files, gpu_facts()), shape, max_batch=16)
        try:
            agreement = compare(files.spec, reference.infer(batch), engine.infer(batch))
        finally:
            engine.close()
            reference.close()
        assert agreement.ok, f"{files.model_id} batch {batch_size}: {agreement}"


@requires_gpu
def test_gpu_cascade_runs_on_tensorrt_engines(built: Path) -> None:
    cascade = Cascade.load(shipped_models(), "tensorrt", max_batch=16, engines=built)
    try:
        assert cascade.classifier.backend.name == "tensorrt"
        assert cascade.segmenter.backend.describe()["precision"] == "fp16"
    finally:
        cascade.close()


@requires_gpu
def test_gpu_a_tampered_sidecar_is_refused_before_tensorrt_sees_the_engine(
    built: Path, tmp_path: Path
) -> None:
    files = load_repository(shipped_models())["segmenter"]
    engine = locate(built, files, gpu_facts())
    copy = tmp_path / "segmenter" / "1"
    copy.mkdir(parents=True)
    (copy / "model.plan").write_bytes(engine.plan.read_bytes())
    data = json.loads((engine.plan.parent / SIDECAR_FILE).read_text())
    data["tensorrt_version"] = "9.0.0"
    (copy / SIDECAR_FILE).write_text(json.dumps(data))
    with pytest.raises(StaleEngine, match=r"tensorrt_version: the engine has '9\.0\.0'"):
        Cascade.load(shipped_models(), "tensorrt", max_batch=16, engines=tmp_path)
