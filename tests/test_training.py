"""edge.training: crops and labels, a tiny real training run, resume, export parity."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from edge.tools.training import export, nets, trainer
from edge.tools.training.labels import LabelledStrip
from edge.tools.training.samples import (
    PRESENT_PIXELS,
    CropSampler,
    augment,
    crop_labels,
    jitter_photometric,
    synthetic_strips,
)
from edge.vision.cascade import Cascade
from edge.vision.modelspec import load_repository


def _strip(present_mask: np.ndarray, known: bool = True) -> LabelledStrip:
    masks = np.zeros((4, *present_mask.shape), bool)
    masks[1] = present_mask
    present = masks.reshape(4, -1).any(1)
    mask_known = np.array([True, known, True, True])
    if not known:
        present[1] = True
    return LabelledStrip("s", np.zeros(present_mask.shape, np.uint8), masks, present, mask_known)


def test_crop_labels_present_ambiguous_and_unknown() -> None:
    mask = np.zeros((64, 64), bool)
    mask[:PRESENT_PIXELS] = True  # a full row per present pixel count: clearly present
    labels, weights = crop_labels(_strip(mask).masks, _strip(mask))
    assert labels.tolist() == [0, 1, 0, 0] and weights.tolist() == [1, 1, 1, 1]
    few = np.zeros((64, 64), bool)
    few[0, :3] = True  # a defect's clipped edge: neither present nor absent
    labels, weights = crop_labels(_strip(few).masks, _strip(few))
    assert weights.tolist() == [1, 0, 1, 1]
    unknown = _strip(np.zeros((64, 64), bool), known=False)
    labels, weights = crop_labels(unknown.masks, unknown)
    assert weights.tolist() == [1, 0, 1, 1]


def test_augment_turns_then_mirrors() -> None:
    a = np.arange(4).reshape(1, 2, 2)
    assert augment(a, 0, False).tolist() == a.tolist()
    assert augment(a, 1, False).tolist() == [[[1, 3], [0, 2]]]
    assert augment(a, 0, True).tolist() == [[[1, 0], [3, 2]]]


def test_photometric_jitter_stays_in_range_and_varies() -> None:
    rng = np.random.default_rng(0)
    base = np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64)
    outs = []
    for _ in range(5):
        image = base.copy()
        jitter_photometric(image, rng)
        assert image.dtype == np.float32 and image.min() >= 0.0 and image.max() <= 1.0
        outs.append(image)
    assert len({round(float(o.mean()), 4) for o in outs}) == 5


def test_sampler_keeps_images_and_masks_aligned() -> None:
    strips = synthetic_strips(4, seed=3, clean_fraction=0.0)
    sampler = CropSampler([], strips, size=64, seed=0, defect_centred=1.0)
    batch = sampler.batch(8)
    assert batch.images.shape == (8, 1, 64, 64) and batch.masks.shape == (8, 4, 64, 64)
    # Every defect pixel of a synthetic strip differs from clean steel, so a crop centred on a
    # defect has mask pixels, and the label says so wherever enough of them are in the crop.
    pixels = batch.masks.reshape(8, 4, -1).sum(-1)
    assert (pixels.sum(1) > 0).all()
    assert np.array_equal(batch.labels == 1, pixels >= PRESENT_PIXELS)


def _one_class_strip(k: int, name: str) -> LabelledStrip:
    masks = np.zeros((4, 64, 256), bool)
    masks[k, 20:40, 100:130] = True
    present = masks.reshape(4, -1).any(1)
    image = np.zeros((64, 256), np.uint8)
    return LabelledStrip(name, image, masks, present, np.ones(4, bool))


@pytest.mark.parametrize("balanced", [False, True])
def test_class_balanced_crops_show_a_rare_class_as_often_as_a_common_one(balanced: bool) -> None:
    """Nine strips of scale, one of pits: drawn strip first, pits are one crop in ten;
    class first, one in two."""
    strips = [_one_class_strip(2, f"scale{i}") for i in range(9)] + [_one_class_strip(0, "pits")]
    sampler = CropSampler(strips, [], size=32, seed=0, defect_centred=1.0, class_balanced=balanced)
    batch = sampler.batch(400)
    share = float((batch.masks[:, 0].reshape(400, -1).any(1)).mean())
    assert (0.4 < share < 0.6) if balanced else (0.04 < share < 0.17), share
    # Centred on its class: every crop holds defect pixels of the class it was drawn for.
    assert batch.masks.reshape(400, 4, -1).any(-1).any(-1).all()


def test_without_turns_a_crop_keeps_its_direction() -> None:
    """A vertical bar stays vertical under flips only; with quarter turns some crops lie it down."""
    masks = np.zeros((4, 64, 64), bool)
    masks[1, :, 30:34] = True
    image = np.where(masks[1], 255, 0).astype(np.uint8)
    bar = LabelledStrip("bar", image, masks, masks.reshape(4, -1).any(1), np.ones(4, bool))
    for turns, vertical_share in ((False, 1.0), (True, 0.5)):
        batch = CropSampler([bar], [], size=64, seed=0, turns=turns).batch(200)
        columns_full = batch.masks[:, 1].all(axis=1).any(axis=1)  # a column masked top to bottom
        assert abs(float(columns_full.mean()) - vertical_share) < 0.1, (turns, columns_full.mean())


def test_segmenter_sampler_skips_strips_without_masks() -> None:
    unknown = _strip(np.zeros((64, 64), bool), known=False)
    with pytest.raises(ValueError, match="no training strips"):
        CropSampler([unknown], [], size=32, seed=0, need_masks=True)


def _settings(tmp_path: Path, role: str = "classifier", **kw: object) -> trainer.TrainSettings:
    defaults = {
        "synthetic": 6,
        "steps": 40,
        "batch": 4,
        "crop": 64,
        "threads": 1,
        "lr": 3e-3,
        "checkpoint_every": 10,
    }
    return trainer.TrainSettings(role=role, out=tmp_path, **{**defaults, **kw})  # type: ignore[arg-type]


@pytest.mark.parametrize("role", ["classifier", "segmenter"])
def test_a_tiny_run_reduces_the_loss(tmp_path: Path, role: str) -> None:
    result = trainer.train(_settings(tmp_path, role))
    assert result.steps == 40 and len(result.losses) == 4
    assert result.losses[-1] < result.losses[0] * 0.95, result.losses


@pytest.mark.parametrize("role", ["classifier", "segmenter"])
def test_bf16_forward_trains_and_exports_float32_weights(tmp_path: Path, role: str) -> None:
    result = trainer.train(_settings(tmp_path, role, bf16=True))
    assert result.losses[-1] < result.losses[0] * 0.95, result.losses
    assert all(p.dtype == torch.float32 for p in result.model.parameters())
    # Back in the default layout, so the export and PyTorch's own check see ordinary tensors.
    assert all(p.is_contiguous() for p in result.model.parameters())


def test_resume_continues_bit_for_bit(tmp_path: Path) -> None:
    whole = trainer.train(_settings(tmp_path / "whole", steps=20))

    def stop_after_first_checkpoint(step: int, _loss: float) -> None:
        if step == 11:
            raise KeyboardInterrupt

    settings = _settings(tmp_path / "split", steps=20)
    with pytest.raises(KeyboardInterrupt):
        trainer.train(settings, stop_after_first_checkpoint)
    resumed = trainer.train(settings)
    assert resumed.resumed_from == 10
    assert resumed.losses == whole.losses
    for (name, a), b in zip(
        whole.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_resume_refuses_other_settings(tmp_path: Path) -> None:
    trainer.train(_settings(tmp_path, steps=10))
    with pytest.raises(trainer.TrainingError, match=r"steps: checkpoint 10 vs now 20.*--fresh"):
        trainer.train(_settings(tmp_path, steps=20))
    assert trainer.train(_settings(tmp_path, steps=20), fresh=True).resumed_from == 0


def test_nothing_to_train_on(tmp_path: Path) -> None:
    with pytest.raises(trainer.TrainingError, match="nothing to train on"):
        trainer.train(_settings(tmp_path, synthetic=0))


@pytest.mark.parametrize("role", ["classifier", "segmenter"])
def test_export_runs_in_onnx_runtime_like_pytorch(tmp_path: Path, role: str) -> None:
    torch.manual_seed(0)
    model = nets.build(role).eval()
    spec = export.reference_spec(role, "test")
    path = export.export(model, spec, tmp_path, {"note": "test"})
    assert path == tmp_path / role / "1" / "model.onnx"
    x = np.random.default_rng(0).random((3, 1, 256, 256), dtype=np.float32)  # batch 3: dynamic
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x})[0]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["edge"])["role"] == role
    assert json.loads(meta["edge.training"]) == {"note": "test"}
    assert json.loads((path.parent / "training.json").read_text()) == {"note": "test"}
    # A second export is the next version; config.toml describes the model exactly.
    assert export.export(model, spec, tmp_path, {}).parent.name == "2"


def test_exported_pair_serves_in_the_cascade(tmp_path: Path) -> None:
    for role in ("classifier", "segmenter"):
        export.export(nets.build(role).eval(), export.reference_spec(role, "t"), tmp_path, {})
    repo = load_repository(tmp_path)
    assert repo["classifier"].spec == export.reference_spec("classifier", "t")
    cascade = Cascade.load(tmp_path, threads=1)
    (result,) = cascade.run([np.full((256, 1600), 120, np.uint8)])
    assert result.scores.shape == (4,) and result.windows_classified == 7


def test_dice_term_counts_only_non_empty_masks() -> None:
    from edge.tools.training.losses import bce_dice_loss

    masks = torch.zeros(1, 2, 8, 8)
    masks[0, 0, 2:6, 2:6] = 1.0  # class 0 present, class 1 empty
    confident_nothing = torch.full((1, 2, 8, 8), -8.0)
    found = confident_nothing.clone()
    found[0, 0, 2:6, 2:6] = 8.0
    # Predicting nothing must cost about a whole Dice (1.0) for the present class; an empty
    # class predicted empty adds nothing beyond BCE.
    assert bce_dice_loss(confident_nothing, masks) > 0.9
    assert bce_dice_loss(found, masks) < 0.05
