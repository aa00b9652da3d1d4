"""Labelled strips in the Severstal format: a folder of images and a ``train.csv``.

``train.csv`` has ``ImageId,ClassId,EncodedPixels`` rows (Kaggle RLE, column-major, 1-indexed,
over the H x W image); an image with no row has no defect. Some data sets also know which
classes an image holds without masks for them (``ImageId,ClassesPresent``): such classes are
"present, mask unknown", which training must not read as "absent".
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.line.camera import images_in, load_strip
from edge.protocol import rle

NUM_CLASSES = 4


class LabelsError(ValueError):
    """A labels file or image folder that cannot be used; the message names the file and row."""


@dataclass(frozen=True)
class LabelledStrip:
    image_id: str
    image: np.ndarray  # uint8, H x W
    masks: np.ndarray  # bool, 4 x H x W; only rows with mask_known[k] are ground truth
    present: np.ndarray  # bool, 4: class k is somewhere in the strip
    mask_known: np.ndarray  # bool, 4: masks[k] is exact (an RLE row, or known absent)

    @property
    def fully_masked(self) -> bool:
        return bool(self.mask_known.all())


def read_rle_rows(labels_csv: Path) -> dict[str, dict[int, str]]:
    """``{image_id: {class_id: rle}}`` from a Severstal ``train.csv``."""
    rows: dict[str, dict[int, str]] = {}
    with _open_csv(labels_csv) as reader:
        _require_columns(reader, labels_csv, ("ImageId", "ClassId", "EncodedPixels"))
        for line, row in enumerate(reader, start=2):
            image_id = (row["ImageId"] or "").strip()
            encoded = (row["EncodedPixels"] or "").strip()
            if not encoded:
                continue  # the old Kaggle layout lists empty (image, class) pairs
            class_id = _class_id(row["ClassId"], labels_csv, line)
            if class_id in rows.setdefault(image_id, {}):
                raise LabelsError(
                    f"{labels_csv}:{line}: a second row for {image_id} class {class_id}"
                )
            rows[image_id][class_id] = encoded
    return rows


def read_image_level(path: Path) -> dict[str, set[int]]:
    """``{image_id: classes}`` from an ``ImageId,ClassesPresent`` file (space-separated ids)."""
    found: dict[str, set[int]] = {}
    with _open_csv(path) as reader:
        _require_columns(reader, path, ("ImageId", "ClassesPresent"))
        for line, row in enumerate(reader, start=2):
            tokens = (row["ClassesPresent"] or "").split()
            found[row["ImageId"].strip()] = {_class_id(t, path, line) for t in tokens}
    return found


def load_labelled(
    images_dir: Path,
    labels_csv: Path,
    *,
    image_level: Path | None = None,
    only: set[str] | None = None,
    exclude: set[str] = frozenset(),  # type: ignore[assignment]
) -> list[LabelledStrip]:
    """Every image in ``images_dir`` with its labels (images without rows are defect-free)."""
    rows = read_rle_rows(labels_csv)
    levels = read_image_level(image_level) if image_level else {}
    files = {p.name: p for p in images_in(images_dir)}
    unknown = sorted(set(rows) - set(files))
    if unknown:
        raise LabelsError(
            f"{labels_csv} labels {len(unknown)} images that are not in {images_dir}: "
            f"{', '.join(unknown[:5])}{' ...' if len(unknown) > 5 else ''}"
        )
    strips = []
    for name in sorted(files):
        if (only is not None and name not in only) or name in exclude:
            continue
        image = load_strip(files[name])
        strips.append(_labelled(name, image, rows.get(name, {}), levels.get(name), labels_csv))
    return strips


def _labelled(
    name: str, image: np.ndarray, rles: dict[int, str], level: set[int] | None, source: Path
) -> LabelledStrip:
    h, w = image.shape
    masks = np.zeros((NUM_CLASSES, h, w), bool)
    for class_id, encoded in rles.items():
        try:
            masks[class_id - 1] = rle.decode(encoded, h, w)
        except ValueError as exc:
            raise LabelsError(f"{source}: {name} class {class_id}: {exc}") from None
    present = masks.reshape(NUM_CLASSES, -1).any(axis=1)
    mask_known = np.ones(NUM_CLASSES, bool)
    for class_id in level or ():
        if class_id not in rles:
            present[class_id - 1] = True
            mask_known[class_id - 1] = False
    return LabelledStrip(name, image, masks, present, mask_known)


def _class_id(value: str | None, source: Path, line: int) -> int:
    try:
        class_id = int(str(value).strip())
    except ValueError:
        raise LabelsError(f"{source}:{line}: ClassId {value!r} is not a number 1-4") from None
    if not 1 <= class_id <= NUM_CLASSES:
        raise LabelsError(f"{source}:{line}: ClassId {class_id} is not in 1-4")
    return class_id


class _open_csv:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)

    def __enter__(self) -> csv.DictReader[str]:
        if not self.path.is_file():
            raise LabelsError(f"{self.path}: no such labels file")
        self._fh = self.path.open(newline="")
        return csv.DictReader(self._fh)

    def __exit__(self, *exc: object) -> None:
        self._fh.close()


def _require_columns(reader: csv.DictReader[str], path: Path, columns: tuple[str, ...]) -> None:
    missing = [c for c in columns if c not in (reader.fieldnames or [])]
    if missing:
        raise LabelsError(
            f"{path}: missing column(s) {missing}; expected a header {','.join(columns)}"
        )
