"""edge.training.labels: the Severstal format, on written files and on the real samples."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.protocol import rle
from edge.tools.training.labels import LabelsError, load_labelled, read_rle_rows


def _folder(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png", "c.png"):
        cv2.imwrite(str(images / name), np.full((64, 96), 100, np.uint8))
    return images


def test_masks_decode_and_unlabelled_images_are_clean(tmp_path: Path) -> None:
    images = _folder(tmp_path)
    mask = np.zeros((64, 96), bool)
    mask[10:20, 30:40] = True
    (tmp_path / "train.csv").write_text(
        f"ImageId,ClassId,EncodedPixels\na.png,3,{rle.encode(mask)}\nb.png,1,\n"
    )
    strips = {s.image_id: s for s in load_labelled(images, tmp_path / "train.csv")}
    assert np.array_equal(strips["a.png"].masks[2], mask)
    assert strips["a.png"].present.tolist() == [False, False, True, False]
    assert strips["a.png"].fully_masked
    # An empty EncodedPixels (old Kaggle layout) and no row at all both mean "no defect".
    assert not strips["b.png"].present.any() and not strips["c.png"].present.any()


def test_image_level_classes_are_present_with_unknown_masks(tmp_path: Path) -> None:
    images = _folder(tmp_path)
    (tmp_path / "train.csv").write_text("ImageId,ClassId,EncodedPixels\n")
    (tmp_path / "levels.csv").write_text("ImageId,ClassesPresent\nc.png,1 4\n")
    strips = {
        s.image_id: s
        for s in load_labelled(images, tmp_path / "train.csv", image_level=tmp_path / "levels.csv")
    }
    c = strips["c.png"]
    assert c.present.tolist() == [True, False, False, True]
    assert c.mask_known.tolist() == [False, True, True, False]
    assert not c.fully_masked


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("Image,Class\n", "missing column"),
        ("ImageId,ClassId,EncodedPixels\na.png,7,1 2\n", "ClassId 7 is not in 1-4"),
        ("ImageId,ClassId,EncodedPixels\na.png,x,1 2\n", "ClassId 'x' is not a number"),
        ("ImageId,ClassId,EncodedPixels\nzz.png,1,1 2\n", "not in"),
        ("ImageId,ClassId,EncodedPixels\na.png,1,1 2 3\n", "a.png class 1: RLE has an odd"),
        ("ImageId,ClassId,EncodedPixels\na.png,1,1 2\na.png,1,5 2\n", "train.csv:3: a second row"),
    ],
)
def test_bad_labels_name_the_problem(tmp_path: Path, csv_text: str, message: str) -> None:
    images = _folder(tmp_path)
    (tmp_path / "train.csv").write_text(csv_text)
    with pytest.raises(LabelsError, match=message):
        load_labelled(images, tmp_path / "train.csv")


def test_missing_labels_file(tmp_path: Path) -> None:
    with pytest.raises(LabelsError, match="no such labels file"):
        read_rle_rows(tmp_path / "nope.csv")


def test_real_samples(severstal: Path) -> None:
    strips = load_labelled(
        severstal / "images",
        severstal / "labels.csv",
        image_level=severstal / "labels_image_level.csv",
    )
    assert len(strips) == 25
    by_id = {s.image_id: s for s in strips}
    # From the data's README: class 3 has masks on 8 images, 0198ab92d is defect-free, and
    # 00f6e702c holds class 3 known only at image level.
    assert sum(s.present[2] and s.mask_known[2] for s in strips) == 8
    assert not by_id["0198ab92d.png"].present.any()
    assert by_id["00f6e702c.png"].present[2] and not by_id["00f6e702c.png"].mask_known[2]
