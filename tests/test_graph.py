"""The fused graph (build_engine.graph) computes what the host path computes, for every model
form the docs promise, with either target's operators, and survives the FP16 conversion.

TensorRT's graph ("tensorrt" target) is run here in ONNX Runtime: what TensorRT will parse is
checked for shapes, dtypes and values on a machine without a GPU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from build_engine.fp16 import convert_to_fp16
from build_engine.graph import PIXELS, FuseError, fuse
from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
from edge.vision.modelspec import ModelFiles, load_repository, resolve_model_dir
from edge.vision.preprocess import InputAdapter, graph_io
from edge.vision.stage import Stage
from tests.plant_models import PLANT_FORMS, write_model_dir


def _stages(files: ModelFiles) -> tuple[Stage, Stage]:
    shape = InputAdapter(files.spec).sample_shape()
    raw = OnnxRuntimeBackend(files, shape, max_batch=4, threads=1)
    fused = OnnxRuntimeBackend(files, shape, max_batch=4, threads=1, fused=True)
    assert not raw.fused and fused.fused and fused.input_dtype == np.uint8
    return Stage(files, raw), Stage(files, fused)


def random_windows(stage: Stage, rng: np.random.Generator) -> tuple[list[np.ndarray], list]:
    channels = 3 if stage.spec.input.channels == 3 else 1
    shape = (256, 1600, 3) if channels == 3 else (256, 1600)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(2)]
    work = [(i, w) for i, image in enumerate(images) for w in stage.inputs.windows(256, 1600)]
    return images, work[:4]


def stage_outputs(stage: Stage, images: list[np.ndarray], work: list) -> np.ndarray:
    """Scores (classifier) or uint8 maps at the window's size (segmenter), one chunk."""
    (_, raw), *_ = stage.run_chunks(images, work)
    if stage.spec.role == "classifier":
        return stage.outputs.scores(raw)
    h, w = stage.inputs.model_hw
    if stage.inputs.feed.mode == "resize":
        h, w = images[0].shape[:2]
    return stage.outputs.maps(raw, h, w)


def _agree(files: ModelFiles, rng: np.random.Generator) -> None:
    host, fused = _stages(files)
    images, work = random_windows(host, rng)
    want, got = stage_outputs(host, images, work), stage_outputs(fused, images, work)
    assert got.dtype == want.dtype and got.shape == want.shape
    if files.spec.role == "classifier":
        np.testing.assert_allclose(got, want, atol=2e-5)
    else:  # round(255 p) of the same probability: at most one step apart
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@pytest.mark.parametrize("make", PLANT_FORMS, ids=lambda f: f.__name__)
def test_fused_plant_models_give_the_host_paths_outputs(make, tmp_path: Path) -> None:
    files = resolve_model_dir(write_model_dir(tmp_path, make()))
    _agree(files, np.random.default_rng(1))


def test_fused_shipped_and_tiny_models_give_the_host_paths_outputs(
    tiny_repo: Path, tmp_path: Path
) -> None:
    from edge.daemon.config import shipped_models

    for repo in (tiny_repo, shipped_models()):
        for files in load_repository(repo).values():
            _agree(files, np.random.default_rng(2))


@pytest.mark.parametrize("target", ["tensorrt", "onnxruntime"])
def test_both_targets_compute_the_same_and_keep_uint8_io_through_fp16(
    target: str, tmp_path: Path
) -> None:
    from edge.daemon.config import shipped_models

    rng = np.random.default_rng(3)
    pixels = rng.integers(0, 256, (3, 256, 256, 1), dtype=np.uint8)
    for role, files in load_repository(shipped_models()).items():
        model = onnx.load(str(files.onnx_path))
        reference = fuse(model, graph_io(files.spec), target="onnxruntime")
        graph = fuse(model, graph_io(files.spec), target=target)  # type: ignore[arg-type]
        path = tmp_path / f"{role}.{target}.onnx"
        path.write_bytes(graph.SerializeToString())
        half = convert_to_fp16(path, tmp_path / f"{role}.{target}.fp16.onnx")
        inputs = {i.name: i.type.tensor_type.elem_type for i in onnx.load(str(half)).graph.input}
        assert inputs == {PIXELS: onnx.TensorProto.UINT8}
        runs = [
            ort.InferenceSession(m, providers=["CPUExecutionProvider"]).run(None, {PIXELS: pixels})[
                0
            ]
            for m in (reference.SerializeToString(), str(path), str(half))
        ]
        want, same, fp16 = (r.astype(np.float64) for r in runs)
        dtype = np.float32 if role == "classifier" else np.uint8
        assert all(r.dtype == dtype for r in runs) and runs[0].shape[0] == 3
        step = 1e-5 if role == "classifier" else 1.0  # one uint8 step, rounding halves
        assert np.abs(same - want).max() <= step
        assert np.abs(fp16 - want).max() <= (2e-3 if role == "classifier" else 2.0)


def test_a_config_that_does_not_fit_the_graph_is_named(tmp_path: Path) -> None:
    from edge.daemon.config import shipped_models

    files = load_repository(shipped_models())["segmenter"]
    spec = files.spec.model_copy(update={"output": files.spec.output.model_copy(
        update={"name": "nope"})})  # fmt: skip
    with pytest.raises(FuseError, match="no output named 'nope'"):
        fuse(onnx.load(str(files.onnx_path)), graph_io(spec))
