"""The plants' existing model forms, served by configuration alone through the real cascade.

Each stand-in model (tests/plant_models.py) computes a known function of its input tensor, so
the expected score is computed here from the colour the strip was painted with and the config's
preprocessing, written out by hand: channel order, caffe/ImageNet normalisation, softmax with a
background logit, NHWC/NCHW, resize or tile feed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from edge.vision.cascade import Cascade
from tests.plant_models import (
    PlantModel,
    efficientnet_binary_512,
    keras_resnet50_binary,
    keras_resnet50_unet,
    pytorch_resnet18_softmax,
    resnet50_multilabel,
    write_model_dir,
)

RGB = np.array([200.0, 120.0, 40.0])  # distinct channels: a swapped order changes every score
CAFFE_MEAN_BGR = np.array([103.939, 116.779, 123.68])
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def model_input(model: PlantModel, rgb: np.ndarray) -> np.ndarray:
    """The input tensor (batch 1) a uniform strip of colour ``rgb`` must become."""
    norm = model.config["input"]["normalization"]
    if norm == "caffe":
        channels = rgb[::-1] - CAFFE_MEAN_BGR
    else:
        channels = (rgb / 255 - IMAGENET_MEAN) / IMAGENET_STD
    shape = model.input_shape
    if model.config["input"]["layout"] == "NHWC":
        return np.broadcast_to(channels, shape).astype(np.float32)
    return np.broadcast_to(channels[None, :, None, None], shape).astype(np.float32)


def expected_scores(model: PlantModel, rgb: np.ndarray) -> np.ndarray:
    out = model.expected(model_input(model, rgb))[0]
    activation = model.config["output"]["activation"]
    if activation == "sigmoid":
        return 1 / (1 + np.exp(-out))
    if activation == "softmax":
        probs = np.exp(out) / np.exp(out).sum()
        return np.delete(probs, model.config["output"]["background_index"])
    return out


def serve(tmp_path: Path, classifier: PlantModel, segmenter: PlantModel) -> Cascade:
    write_model_dir(tmp_path, classifier)
    write_model_dir(tmp_path, segmenter)
    return Cascade.load(tmp_path, max_batch=8, threads=1)


def uniform_strip(rgb: np.ndarray, height: int = 256, width: int = 1600) -> np.ndarray:
    return np.broadcast_to(rgb.astype(np.uint8), (height, width, 3)).copy()


CLASSIFIERS: list[Callable[[], PlantModel]] = [
    keras_resnet50_binary,
    pytorch_resnet18_softmax,
    resnet50_multilabel,
    efficientnet_binary_512,
]


@pytest.mark.parametrize("make", CLASSIFIERS, ids=lambda f: f.__name__)
def test_plant_classifier_scores_follow_its_config(
    tmp_path: Path, make: Callable[[], PlantModel]
) -> None:
    classifier, unet = make(), keras_resnet50_unet()
    cascade = serve(tmp_path, classifier, unet)
    (result,) = cascade.run([uniform_strip(RGB)])
    want = expected_scores(classifier, RGB)
    # float32 normalisation on ~100-valued caffe inputs: agreement to 1e-4 is all there is.
    np.testing.assert_allclose(result.scores, want, atol=5e-4)
    feed = classifier.config["feed"]
    rows, columns = np.ceil(256 / feed["height"]), np.ceil(1600 / feed["width"])
    tiles = 1 if feed["mode"] == "resize" else int(rows * columns)  # 224 px tiles: 2 rows of 8
    assert result.windows_classified == tiles
    # Reversed channels must score differently, or the test could not see an order mix-up.
    assert not np.allclose(want, expected_scores(classifier, RGB[::-1]), atol=1e-3)


def test_per_class_gates_decide_what_is_segmented(tmp_path: Path) -> None:
    classifier = resnet50_multilabel()  # gates 0.3, 0.5, 0.7
    cascade = serve(tmp_path, classifier, keras_resnet50_unet())
    outcomes = set()
    for value in range(0, 256, 15):
        rgb = np.full(3, float(value))
        scores = expected_scores(classifier, rgb)
        (result,) = cascade.run([uniform_strip(rgb)])
        gated = bool((scores >= np.array([0.3, 0.5, 0.7])).any())
        assert (result.windows_segmented == 1) == gated, (value, scores)
        assert (result.probs is not None) == gated
        outcomes.add(gated)
    assert outcomes == {True, False}  # both sides of the gates were exercised


def test_resized_unet_output_comes_back_at_full_frame_size(tmp_path: Path) -> None:
    unet = keras_resnet50_unet()
    cascade = serve(tmp_path, efficientnet_binary_512(), unet)
    cascade.gate[:] = 0.0  # segment every strip
    (result,) = cascade.run([uniform_strip(RGB, 256, 1600)])
    assert result.probs is not None and result.probs.shape == (4, 256, 1600)
    want = unet.expected(model_input(unet, RGB))[0, 0, 0]  # the same at every pixel
    # uint8 maps, round(255 * p): within one step of the model's probability
    np.testing.assert_allclose(result.probs[:, 128, 800], want * 255, atol=1.0)
    np.testing.assert_allclose(result.probs.std(axis=(1, 2)), 0, atol=1e-5)


def test_grayscale_strips_feed_three_channel_models(tmp_path: Path) -> None:
    classifier = pytorch_resnet18_softmax()
    cascade = serve(tmp_path, classifier, keras_resnet50_unet())
    (result,) = cascade.run([np.full((256, 1600), 90, np.uint8)])
    np.testing.assert_allclose(
        result.scores, expected_scores(classifier, np.full(3, 90.0)), rtol=1e-4
    )


def test_batches_larger_than_max_batch_are_split(tmp_path: Path) -> None:
    cascade = serve(tmp_path, resnet50_multilabel(), keras_resnet50_unet())
    strips = [uniform_strip(np.full(3, float(v))) for v in (10, 100, 200)]  # 21 tiles, batch 8
    results = cascade.run(strips)
    singles = [cascade.run([s])[0] for s in strips]
    for batched, single in zip(results, singles, strict=True):
        np.testing.assert_allclose(batched.scores, single.scores, rtol=1e-6)
        assert batched.windows_classified == 7


def test_config_that_contradicts_the_model_is_refused_at_load(tmp_path: Path) -> None:
    from edge.vision.backends.base import BackendError

    classifier = keras_resnet50_binary()
    broken = PlantModel(
        classifier.name,
        {**classifier.config, "input": {**classifier.config["input"], "layout": "NCHW"}},
        classifier.onnx_bytes,
        classifier.expected,
    )
    with pytest.raises(
        BackendError,
        match=r"input .input_1. has shape \[.N., 224, 224, 3\], but its config \(input.layout=NCHW",
    ):
        serve(tmp_path, broken, keras_resnet50_unet())


def test_only_flagged_tiles_go_through_the_segmenter(tiny_repo: Path) -> None:
    cascade = Cascade.load(tiny_repo, max_batch=8, threads=1)
    strip = np.full((256, 1600), 128, np.uint8)
    strip[100:120, 500:520] = 0  # inside the tile at x=448 only (clear of its 32 px overlaps)
    strip[10:20, 1350:1360] = 0  # in the overlap of the tiles at 1120 and 1344: both flagged
    (result,) = cascade.run([strip])
    assert result.windows_classified == 7
    assert result.windows_segmented == 3


def _fixed_classifier(path: Path, logits: list[float]) -> None:
    """A classifier that gives every tile the same ``logits``, whatever it holds."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.tiny_models import _save

    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image"], ["mean"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["mean", "zero"], ["nothing"]),
            helper.make_node("Add", ["nothing", "bias"], ["logits"]),
        ],
        "fixed_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 256, 256])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
        initializer=[
            numpy_helper.from_array(np.zeros((1, 4), np.float32), "zero"),
            numpy_helper.from_array(np.asarray(logits, np.float32), "bias"),
        ],
    )
    _save(graph, path)


@pytest.mark.parametrize("same_classes", [True, False])
def test_each_class_is_kept_only_where_the_classifier_flagged_it(
    tmp_path: Path, same_classes: bool
) -> None:
    from tests.tiny_models import write_tiny_repository

    repo = write_tiny_repository(tmp_path)
    # The classifier sees only class 1 ("dark"), on every tile.
    _fixed_classifier(repo / "classifier" / "1" / "model.onnx", [10.0, -10.0, -10.0, -10.0])
    if not same_classes:
        config = repo / "classifier" / "config.toml"
        config.write_text(config.read_text().replace("very_bright", "blotch"))
    strip = np.full((256, 1600), 128, np.uint8)
    strip[40:90, 300:420] = 10  # the tiny segmenter: class 1 "dark" and 3 "very_dark"
    strip[150:160, 1500:1590] = 245  # class 2 "bright" and 4 "very_bright"
    (result,) = Cascade.load(repo, max_batch=8, threads=1).run([strip])
    assert result.probs is not None
    found = [bool((result.probs[k] >= 0.5).any()) for k in range(4)]
    # Same classes: the segmenter's "very_dark" and "bright" patches are not confirmed by the
    # classifier and are dropped. Other class lists cannot be matched: every class is kept.
    assert found == ([True, False, False, False] if same_classes else [True, True, True, True])


def _logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


def test_scores_near_a_gate_are_taken_from_the_precise_model(tmp_path: Path) -> None:
    """A reduced-precision classifier's scores within RECHECK_MARGIN of a gate are replaced,
    window by window, with its FP32 twin's: here two real models that give fixed scores."""
    from edge.vision.backends.onnxruntime import OnnxRuntimeBackend
    from edge.vision.modelspec import load_repository
    from edge.vision.preprocess import InputAdapter
    from edge.vision.stage import RECHECK_MARGIN
    from tests.tiny_models import write_tiny_repository

    fast, precise = write_tiny_repository(tmp_path / "fast"), write_tiny_repository(tmp_path / "p")
    near = 0.5 - RECHECK_MARGIN / 2  # just under the 0.5 gate: within the margin
    _fixed_classifier(fast / "classifier" / "1" / "model.onnx", [_logit(near), -10, -10, -10])
    _fixed_classifier(precise / "classifier" / "1" / "model.onnx", [_logit(0.51), -9, -9, -9])
    cascade = Cascade.load(fast, max_batch=8, threads=1)
    files = load_repository(precise)["classifier"]
    twin = OnnxRuntimeBackend(
        files, InputAdapter(files.spec).sample_shape(), max_batch=8, threads=1, fused=True
    )
    strip = np.full((256, 1600), 128, np.uint8)

    assert cascade.classifier.precise is None  # ONNX Runtime runs FP32: no twin of its own
    _, alone = cascade.classify([strip])
    np.testing.assert_allclose(alone[:, 0], near, atol=1e-6)
    assert cascade.run([strip])[0].windows_segmented == 0  # under the gate: nothing segmented

    cascade.classifier.precise = twin
    _, rechecked = cascade.classify([strip])
    # Every window had one class near its gate: the whole row is the twin's, every class.
    np.testing.assert_allclose(rechecked[:, 0], 0.51, atol=1e-6)
    np.testing.assert_allclose(rechecked[:, 1:], 1 / (1 + np.exp(9)), atol=1e-6)
    assert cascade.run([strip])[0].windows_segmented == 7  # the twin's verdict decides

    far = 0.5 - 2 * RECHECK_MARGIN  # outside the margin: the fast model's own score stands
    _fixed_classifier(fast / "classifier" / "1" / "model.onnx", [_logit(far), -10, -10, -10])
    cascade = Cascade.load(fast, max_batch=8, threads=1)
    cascade.classifier.precise = twin
    _, kept = cascade.classify([strip])
    np.testing.assert_allclose(kept[:, 0], far, atol=1e-6)
    cascade.close()
