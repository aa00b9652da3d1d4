"""edge.handcrafted: the fixed-filter models (no training, no torch), on seeded synthetic strips.

They were the first reference models; trained ones replaced them in models/. They stay as a
model pair that needs nothing but onnx to build, with known behaviour on synthetic strips.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import onnxruntime as ort
import pytest

from edge.tools.handcrafted import CLASSES, write_repository
from edge.vision.modelspec import (
    ModelFiles,
    load_repository,
    resolve_model_dir,
    spec_from_onnx_metadata,
)
from edge.vision.synthetic import generate_strip
from edge.vision.tiling import tile_grid

FILES = [
    "classifier/config.toml",
    "classifier/1/model.onnx",
    "segmenter/config.toml",
    "segmenter/1/model.onnx",
]
GRID = tile_grid(256, 1600, 256, 256)
MIN_PX = 30  # a tile "has" a class when it holds at least this many of its pixels


def _session(files: ModelFiles) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(files.onnx_path), options, providers=["CPUExecutionProvider"])


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(z / 2.0))  # no overflow warnings for large logits


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("handcrafted")
    write_repository(root)
    return root


@pytest.fixture(scope="module")
def repo(models: Path) -> dict[str, ModelFiles]:
    return dict(load_repository(models))


@pytest.fixture(scope="module")
def tiles() -> tuple[np.ndarray, np.ndarray]:
    """Tiles (N,1,256,256 float32 in 0..1) and per-class pixel counts (N,4) of seeded strips."""
    rng = np.random.default_rng(20240601)
    images, areas = [], []
    for classes in [()] * 6 + [(k,) for k in (1, 2, 3, 4) for _ in range(8)]:
        strip = generate_strip(rng, defect_classes=classes)
        for t in GRID:
            images.append(strip.image[t.y : t.y + t.h, t.x : t.x + t.w])
            areas.append(strip.masks[:, t.y : t.y + t.h, t.x : t.x + t.w])
    x = np.stack(images)[:, None].astype(np.float32) / 255.0
    return x, np.stack(areas)


@pytest.fixture(scope="module")
def outputs(
    repo: dict[str, ModelFiles], tiles: tuple[np.ndarray, np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    """Classifier probabilities (N,4) and segmenter probabilities (N,4,256,256)."""
    x, _ = tiles
    scores, masks = [], []
    cls, seg = _session(repo["classifier"]), _session(repo["segmenter"])
    for i in range(0, len(x), 32):
        scores.append(_sigmoid(cls.run(None, {"image": x[i : i + 32]})[0]))
        masks.append(_sigmoid(seg.run(None, {"image": x[i : i + 32]})[0]))
    return np.concatenate(scores), np.concatenate(masks)


def test_rebuilding_gives_byte_identical_files(tmp_path: Path, models: Path) -> None:
    write_repository(tmp_path)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (models / name).read_bytes(), name


def test_models_are_small(models: Path) -> None:
    for name in FILES:
        assert (models / name).stat().st_size < 300_000


def test_configs_parse_and_match_the_onnx_metadata(
    models: Path, repo: dict[str, ModelFiles]
) -> None:
    for role, output, shape in (("classifier", "logits", 2), ("segmenter", "mask_logits", 4)):
        files = resolve_model_dir(models / role)
        spec = files.spec
        assert spec.role == role and spec.classes == CLASSES and files.version == 1
        assert spec.input.name == "image" and spec.input.normalization == "unit"
        assert spec.input.layout == "NCHW" and spec.input.channels == 1
        assert (spec.feed.mode, spec.feed.height, spec.feed.width) == ("tile", 256, 256)
        assert spec.output.name == output and spec.output.activation == "sigmoid"
        assert "not trained" in spec.description
        meta = spec_from_onnx_metadata(files.onnx_path, default_name=role)
        assert meta == spec
        outputs = _session(files).get_outputs()
        assert [o.name for o in outputs] == [output] and len(outputs[0].shape) == shape
    assert len(repo["classifier"].spec.per_class("gate")) == 4
    assert len(repo["segmenter"].spec.per_class("min_area")) == 4


@pytest.mark.parametrize("batch", [1, 5])
def test_models_run_with_a_dynamic_batch(repo: dict[str, ModelFiles], batch: int) -> None:
    x = np.random.default_rng(batch).random((batch, 1, 256, 256), dtype=np.float32)
    cls, seg = _session(repo["classifier"]), _session(repo["segmenter"])
    assert cls.get_inputs()[0].name == "image"
    assert cls.get_inputs()[0].shape == ["N", 1, 256, 256]
    (logits,) = cls.run(None, {"image": x})
    (mask_logits,) = seg.run(None, {"image": x})
    assert logits.shape == (batch, 4) and logits.dtype == np.float32
    assert mask_logits.shape == (batch, 4, 256, 256) and mask_logits.dtype == np.float32
    assert np.isfinite(logits).all() and np.isfinite(mask_logits).all()


def test_classifier_scores_defects_above_clean_tiles(
    tiles: tuple[np.ndarray, np.ndarray], outputs: tuple[np.ndarray, np.ndarray]
) -> None:
    areas = tiles[1].sum(axis=(2, 3))
    scores = outputs[0]
    clean = areas.sum(axis=1) == 0
    for k, name in enumerate(CLASSES):
        pos = areas[:, k] >= MIN_PX
        assert pos.sum() >= 5, name
        # Rank-based AUC: the fraction of (defective, clean) pairs ordered correctly.
        pairs = scores[pos, k][:, None] > scores[clean, k][None, :]
        assert pairs.mean() >= 0.9, name
        assert np.median(scores[pos, k]) > np.median(scores[clean, k]) + 0.5, name


def test_gate_passes_defects_and_rarely_clean_tiles(
    repo: dict[str, ModelFiles],
    tiles: tuple[np.ndarray, np.ndarray],
    outputs: tuple[np.ndarray, np.ndarray],
) -> None:
    areas = tiles[1].sum(axis=(2, 3))
    gate = np.asarray(repo["classifier"].spec.per_class("gate"))
    passed = (outputs[0] >= gate).any(axis=1)
    assert passed[areas.sum(axis=1) == 0].mean() < 0.1
    assert passed[areas.max(axis=1) >= MIN_PX].mean() > 0.8


def test_segmenter_masks_overlap_ground_truth(
    repo: dict[str, ModelFiles],
    tiles: tuple[np.ndarray, np.ndarray],
    outputs: tuple[np.ndarray, np.ndarray],
) -> None:
    truth = tiles[1]
    spec = repo["segmenter"].spec
    predicted = outputs[1] >= np.asarray(spec.per_class("mask"))[None, :, None, None]
    clean = truth.sum(axis=(1, 2, 3)) == 0
    # The daemon drops components under min_area on the full frame; per tile is close enough.
    for i, k in np.ndindex(predicted.shape[:2]):
        _, labels, stats, _ = cv2.connectedComponentsWithStats(predicted[i, k].astype(np.uint8))
        keep = stats[:, cv2.CC_STAT_AREA] >= spec.per_class("min_area")[k]
        predicted[i, k] = keep[labels] & (labels > 0)
    for k, name in enumerate(CLASSES):
        pos = truth[:, k].sum(axis=(1, 2)) >= MIN_PX
        inter = (predicted[pos, k] & truth[pos, k]).sum(axis=(1, 2))
        dice = 2 * inter / (predicted[pos, k].sum(axis=(1, 2)) + truth[pos, k].sum(axis=(1, 2)))
        assert dice.mean() > 0.5, (name, dice.mean())
    # Noise pixels on clean steel pass the threshold; min_area is what removes them.
    assert predicted[clean].any(axis=(1, 2, 3)).mean() < 0.05
