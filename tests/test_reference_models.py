"""The shipped reference models in models/: trained by the committed command, and they work.

The quality checks hold the models to what was measured at release (models/README.md), with a
margin, using `edge eval`'s own code on the 33 real strips of severstal_train held out of
training and tuning (models/severstal_train_holdout.txt); on synthetic strips (what `edge demo`
shows), defects found and clean strips left alone.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from edge.daemon.config import shipped_models
from edge.tools.training.evaluate import evaluate
from edge.tools.training.labels import load_labelled
from edge.vision.cascade import Cascade
from edge.vision.modelspec import load_repository
from edge.vision.postprocess import strip_defects
from edge.vision.synthetic import strip_stream

MODELS = shipped_models()
HOLDOUT = MODELS / "severstal_train_holdout.txt"  # nothing is chosen on these
VALIDATION = MODELS / "severstal_train_validation.txt"  # the thresholds are tuned on these
NOT_TRAINED_ON = MODELS / "severstal_train_not_trained_on.txt"  # both: edge train --holdout


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    return Cascade.load(MODELS, threads=2, max_batch=8)


def _ids(path: Path) -> set[str]:
    return {line.split("#")[0].strip() for line in path.read_text().splitlines()} - {""}


def test_models_record_how_they_were_trained() -> None:
    for role, files in load_repository(MODELS).items():
        record = json.loads((files.onnx_path.parent / "training.json").read_text())
        assert record["command"].startswith(f"edge train {role} "), record["command"]
        assert "-dirty" not in record["git_commit"] and len(record["git_commit"]) == 40
        assert set(record["data"]["held_out"]) == _ids(NOT_TRAINED_ON)
        assert _ids(NOT_TRAINED_ON) == _ids(HOLDOUT) | _ids(VALIDATION)
        assert not _ids(HOLDOUT) & _ids(VALIDATION)
        assert not set(record["data"]["real_images"]) & _ids(NOT_TRAINED_ON)
        assert record["loss_per_interval"][-1] < record["loss_per_interval"][0]
        assert files.onnx_path.stat().st_size < 3_000_000  # a few MB at most in the repo


@pytest.fixture(scope="module")
def holdout_report(cascade: Cascade, severstal_train: Path) -> dict:
    strips = load_labelled(
        severstal_train / "images",
        severstal_train / "labels.csv",
        image_level=severstal_train / "labels_image_level.csv",
        only=_ids(HOLDOUT),
    )
    assert len(strips) == len(_ids(HOLDOUT)) == 33
    report, _ = evaluate(cascade, strips)
    return report


def test_holdout_classifier_ranks_defects_above_clean_tiles(holdout_report: dict) -> None:
    # Measured at release (models/README.md): tile AUC 0.685 / 0.961 / 0.841 / 0.915 (mean
    # 0.851), strip AUC 0.703 / 0.829 / 0.873 / 0.914 for pits / scratches / scale / holes. With
    # 5-12 defective strips a class, one strip ranked the other way moves its AUC by 0.01-0.03.
    per_class = holdout_report["classifier"]["per_class"]
    tile = [per_class[f"class_{k}"]["tile_auc"] for k in range(1, 5)]
    strip = [per_class[f"class_{k}"]["strip_auc"] for k in range(1, 5)]
    assert None not in tile and None not in strip, per_class
    assert min(tile) >= 0.65 and holdout_report["classifier"]["mean_tile_auc"] >= 0.82, tile
    assert min(strip[1:]) >= 0.80 and strip[0] >= 0.66, strip  # issue 15's 0.80: met but pits


def test_holdout_masks_stay_where_they_were_measured(holdout_report: dict) -> None:
    # Measured at release: Dice on positives 0.123 / 0.000 / 0.563 / 0.385 (mean 0.268); Kaggle
    # mean Dice 0.776 against 0.800 for predicting nothing (issue 15's bar, +0.05, is not met;
    # v1 made 0.760 and v2 0.769 on these strips).
    seg = holdout_report["segmentation"]
    positives = [seg["per_class"][f"class_{k}"]["dice_on_positives"] for k in range(1, 5)]
    assert sum(positives) / 4 >= 0.24 and positives[2] >= 0.52 and positives[3] >= 0.34, positives
    nothing = seg["baseline_predict_nothing"]["kaggle_mean_dice"]
    assert seg["kaggle_mean_dice"] >= nothing - 0.035, (seg["kaggle_mean_dice"], nothing)


def test_synthetic_strips_are_told_apart(cascade: Cascade) -> None:
    """What `edge demo` shows: defective strips flagged, clean ones left alone."""
    spec = cascade.segmenter.spec
    caught = missed = false_alarms = clean = 0
    found_classes: set[int] = set()
    wrong_classes = 0  # a class reported on a strip that does not hold it
    for strip in itertools.islice(strip_stream(7, defect_rate=0.3), 60):
        (result,) = cascade.run([strip.image])
        found = (
            {d["class_id"] for d in strip_defects(result, spec)}
            if result.probs is not None
            else set()
        )
        found_classes |= found & set(strip.classes)
        wrong_classes += len(found - set(strip.classes))
        if strip.classes:
            caught += bool(found)
            missed += not found
        else:
            false_alarms += bool(found)
            clean += 1
    # Measured at release on these 60: 12 of 12 defective caught (each class at least once), 0 of
    # 48 clean flagged, 1 class reported on a strip without it; on 120: 29 of 30 and 0 of 90, per
    # class pits 9/9, scratches 5/6, scale 17/17, holes 11/11.
    assert caught >= 0.9 * (caught + missed), (caught, missed)
    assert false_alarms <= 0.05 * clean, (false_alarms, clean)
    assert found_classes == {1, 2, 3, 4}, found_classes
    assert wrong_classes <= 2
