"""edge eval / edge tune: report numbers on constructed outputs, and the commands end to end."""

from __future__ import annotations

import json
import shlex
import tomllib
from pathlib import Path

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.protocol import rle
from edge.tools.training.evaluate import StripOutputs, classifier_report, segmentation_report
from edge.tools.training.labels import LabelledStrip
from edge.tools.training.samples import synthetic_strips
from edge.tools.training.tune import tune
from edge.vision.tiling import tile_grid

H, W = 256, 1600


def _outputs(
    truth: np.ndarray, predicted: np.ndarray, probs: np.ndarray, scores: np.ndarray
) -> StripOutputs:
    present = truth.reshape(4, -1).any(1)
    strip = LabelledStrip("x", np.zeros((H, W), np.uint8), truth, present, np.ones(4, bool))
    return StripOutputs(
        strip, tile_grid(H, W, 256, 256), scores, probs.astype(np.float16), predicted
    )


def _case() -> list[StripOutputs]:
    """Strip A: a class-3 defect in tile 0, found exactly. Strip B: clean, with a false speck."""
    truth_a = np.zeros((4, H, W), bool)
    truth_a[2, 50:150, 20:120] = True
    scores_a = np.full((7, 4), 0.1, np.float32)
    scores_a[0, 2] = 0.9
    probs_a = truth_a * np.float32(0.8)
    truth_b = np.zeros((4, H, W), bool)
    speck = np.zeros((4, H, W), bool)
    speck[2, 10:14, 1000:1004] = True  # 16 px
    scores_b = np.full((7, 4), 0.1, np.float32)
    scores_b[4, 2] = 0.3  # the speck's tile scores low
    probs_b = speck * np.float32(0.7)
    return [
        _outputs(truth_a, truth_a, probs_a, scores_a),
        _outputs(truth_b, speck, probs_b, scores_b),
    ]


def test_reports_by_hand() -> None:
    outputs = _case()
    seg = segmentation_report(outputs)
    c3 = seg["per_class"]["class_3"]
    assert c3["dice_on_positives"] == 1.0 and c3["positive_images"] == 1
    assert c3["baseline_predict_nothing"]["dice_on_positives"] == 0.0
    assert c3["mean_dice_all_images"] == 0.5  # strip B: a speck where nothing is -> 0
    # 8 pairs: 7 empty-vs-empty (1 each, predict-nothing too) + ...
    assert seg["kaggle_mean_dice"] == pytest.approx((1 + 0 + 6) / 8)
    assert seg["baseline_predict_nothing"]["kaggle_mean_dice"] == pytest.approx(7 / 8)
    cls = classifier_report(outputs, [0.5] * 4)
    c3 = cls["per_class"]["class_3"]
    assert c3["tile_auc"] == 1.0 and c3["strip_auc"] == 1.0
    assert c3["tile_confusion_at_gate"]["tp"] == 1 and c3["tile_confusion_at_gate"]["fp"] == 0
    assert cls["per_class"]["class_1"]["tile_auc"] is None  # no positive tiles: undefined


def test_tune_finds_what_separates() -> None:
    result = tune(_case())
    c3 = result["per_class"]["class_3"]
    assert c3["tuned"] and not result["per_class"]["class_1"]["tuned"]
    assert c3["mask"]["dice_on_positives"] == 1.0
    # Either stage removes the speck (16 px, in a tile scoring 0.3): a gate above 0.3 or a
    # min_area above 16. The gate does it without also removing small true defects, so
    # min_area stays 0 and the gate is the middle of 0.35..0.9 (what keeps tile 0, 0.9).
    assert result["chosen"]["min_area"][2] == 0
    assert c3["min_area"]["mean_dice"] == 1.0
    assert result["chosen"]["gate"][2] == 0.65
    # At min_area 0 a gate of 0.3 or less lets the speck through.
    by_gate = dict(c3["gate"]["sweep"])
    assert by_gate[0.3] < 1.0 and by_gate[0.35] == 1.0


def _labelled_folder(root: Path, count: int = 6) -> tuple[Path, Path]:
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i, strip in enumerate(synthetic_strips(count, seed=5, clean_fraction=0.2)):
        name = f"s{i}.png"
        cv2.imwrite(str(images / name), strip.image)
        for k in range(4):
            if strip.present[k]:
                rows.append(f"{name},{k + 1},{rle.encode(strip.masks[k])}")
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return images, root / "train.csv"


def test_the_recorded_command_trains_the_same_settings_again(tmp_path: Path) -> None:
    images, labels = _labelled_folder(tmp_path / "data", count=3)
    first, second = tmp_path / "first", tmp_path / "second"
    args = ["train", "classifier", "--data", str(images), "--labels", str(labels)]
    args += ["--steps", "2", "--batch", "2", "--threads", "1", "--out", str(first)]
    args += ["--no-turns", "--class-balanced"]  # switched off a default of True; on one of False
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads((first / "classifier" / "1" / "training.json").read_text())
    assert "--no-turns" in record["command"] and "--class-balanced" in record["command"]

    again = shlex.split(record["command"].replace(str(first), str(second)))
    assert again[:2] == ["edge", "train"]
    result = CliRunner().invoke(app, again[1:])
    assert result.exit_code == 0, result.output
    replayed = json.loads((second / "classifier" / "1" / "training.json").read_text())
    assert replayed["settings"] == record["settings"]
    assert replayed["settings"]["turns"] is False
    assert replayed["command"] == record["command"].replace(str(first), str(second))


def test_train_eval_tune_commands(tmp_path: Path) -> None:
    images, labels = _labelled_folder(tmp_path / "data")
    repo = tmp_path / "models"
    runner = CliRunner()
    data = ["--data", str(images), "--labels", str(labels), "--out", str(repo)]
    tiny = ["--steps", "4", "--batch", "2", "--threads", "1", "--synthetic", "2"]
    for role in ("classifier", "segmenter"):
        result = runner.invoke(app, ["train", role, *data, *tiny])
        assert result.exit_code == 0, result.output
        assert f"wrote {repo / role / '1' / 'model.onnx'}" in result.output
    record = json.loads((repo / "segmenter" / "1" / "training.json").read_text())
    assert record["command"].startswith("edge train segmenter") and record["steps"] == 4
    assert len(record["data"]["real_images"]) == 6 and record["data"]["synthetic_strips"] == 2

    report = tmp_path / "report"
    result = runner.invoke(
        app,
        [
            "eval",
            "--models",
            str(repo),
            "--data",
            str(images),
            "--labels",
            str(labels),
            "--report",
            str(report),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "Dice+ nothing" in result.output
    numbers = json.loads((report / "report.json").read_text())
    assert set(numbers) == {"models", "images", "classifier", "segmentation"}
    assert numbers["segmentation"]["baseline_predict_nothing"]["kaggle_mean_dice"] is not None
    assert (report / "roc.png").stat().st_size > 1000 and (report / "confusion.png").is_file()
    assert list(report.glob("overlay_*.png"))

    result = runner.invoke(
        app,
        [
            "tune",
            "--models",
            str(repo),
            "--data",
            str(images),
            "--labels",
            str(labels),
            "--report",
            str(tmp_path / "tune.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    chosen = json.loads((tmp_path / "tune.json").read_text())["chosen"]
    seg = tomllib.loads((repo / "segmenter" / "config.toml").read_text())
    cls = tomllib.loads((repo / "classifier" / "config.toml").read_text())
    tuned = [
        k
        for k in range(4)
        if f"class {k + 1}: " in result.output
        and "kept" not in result.output.split(f"class {k + 1}: ")[1].splitlines()[0]
    ]
    for k in tuned:
        assert seg["thresholds"]["mask"][k] == chosen["mask"][k]
        assert cls["thresholds"]["gate"][k] == chosen["gate"][k]
    # The rewritten configs still serve.
    result = runner.invoke(
        app, ["eval", "--models", str(repo), "--data", str(images), "--labels", str(labels)]
    )
    assert result.exit_code == 0, result.output


def test_eval_errors_are_clear(tmp_path: Path, tiny_repo: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "--models", str(tiny_repo)])
    assert result.exit_code == 2 and "or --synthetic N" in result.output
    result = runner.invoke(
        app,
        [
            "eval",
            "--models",
            str(tiny_repo),
            "--data",
            str(tmp_path),
            "--labels",
            str(tmp_path / "x.csv"),
        ],
    )
    assert result.exit_code == 2 and "x.csv: no such labels file" in result.output


def test_eval_on_generated_strips_alone(tiny_repo: Path) -> None:
    result = CliRunner().invoke(app, ["eval", "--models", str(tiny_repo), "--synthetic", "3"])
    assert result.exit_code == 0, result.output
    assert "3 images" in result.output


def test_overlay_labels_its_panels_and_shows_a_legend_of_the_class_colours() -> None:
    from edge.tools.training.plots import (
        CLASS_COLOURS,
        LEGEND_HEIGHT,
        PANEL_LABEL_WIDTH,
        overlay,
    )

    (strip,) = synthetic_strips(1, seed=5, clean_fraction=0.0)
    shifted = np.roll(strip.masks, 30, axis=2)  # a prediction off by 30 px
    image = overlay(StripOutputs(strip, [], np.zeros((7, 4)), np.zeros((4, 256, 1600)), shifted))
    assert image.shape == (2 * 256 + 6 + LEGEND_HEIGHT, PANEL_LABEL_WIDTH + 1600, 3)
    legend = image[-LEGEND_HEIGHT:]
    for colour in CLASS_COLOURS:  # every class's swatch, whichever classes the strip has
        assert (legend == colour).all(axis=-1).sum() >= 100, colour
    margin = image[:256, :PANEL_LABEL_WIDTH]
    assert (margin < 128).any() and (margin == 255).mean() > 0.8  # "truth" written in black
    # The truth and the model panels differ where the prediction moved.
    top, bottom = image[:256, PANEL_LABEL_WIDTH:], image[262 : 262 + 256, PANEL_LABEL_WIDTH:]
    assert not np.array_equal(top, bottom)
