"""The bench's null models (``edge bench --mode host``): the I/O of a real pair, a known verdict.

Each verdict is run through the daemon's own cascade and post-processing, so what is checked is
what the daemon does with them: clean strips are never segmented, a defective one is a defect of
every class at every pixel, and the contrast verdict flags dark and bright blobs and nothing
else, whatever the layout, normalisation or activation of the pair they stand in for.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge.daemon.config import shipped_models
from edge.protocol import rle
from edge.tools.bench.null_models import VERDICTS, write_null_repository
from edge.vision.cascade import Cascade
from edge.vision.modelspec import load_repository
from edge.vision.postprocess import strip_defects
from tests.plant_models import keras_resnet50_unet, pytorch_resnet18_softmax, write_model_dir
from tests.tiny_models import write_tiny_repository

H, W = 256, 1600
DARK_BLOB = (slice(60, 140), slice(300, 380))  # 80 x 80 px in the second tile
BRIGHT_BLOB = (slice(100, 180), slice(1100, 1180))  # in the fifth


def grey(value: int = 128) -> np.ndarray:
    return np.full((H, W), value, np.uint8)


def blobs() -> np.ndarray:
    strip = grey()
    strip[DARK_BLOB] = 5
    strip[BRIGHT_BLOB] = 250
    return strip


def textured(seed: int = 0) -> np.ndarray:
    """Mid-range noise (60..200): busy pixels, no dark or bright ones."""
    return np.random.default_rng(seed).integers(60, 200, (H, W), dtype=np.uint8)


def blob_mask(*regions: tuple[slice, slice]) -> np.ndarray:
    mask = np.zeros((H, W), bool)
    for region in regions:
        mask[region] = True
    return mask


def plant_pair(root: Path) -> Path:
    """A plant's pair: softmax classifier with a background logit (3 channels, 224 px tiles,
    ImageNet normalisation) and a NHWC U-Net on the whole strip resized (caffe, no activation)."""
    write_model_dir(root, pytorch_resnet18_softmax())
    write_model_dir(root, keras_resnet50_unet())
    return root


def softmax_nhwc_pair(root: Path) -> Path:
    """The tiny pair, its segmenter re-declared NHWC in and out with a softmax and a background
    logit (only the configs matter: the null models are written from them)."""
    write_tiny_repository(root)
    config = root / "segmenter" / "config.toml"
    config.write_text(
        config.read_text()
        + '[input]\nlayout = "NHWC"\n[output]\nactivation = "softmax"\nbackground_index = 0\n'
        + 'layout = "NHWC"\n'
    )
    return root


PAIRS = {"shipped": None, "plant": plant_pair, "softmax_nhwc": softmax_nhwc_pair}


@pytest.fixture(params=list(PAIRS))
def like(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    make = PAIRS[request.param]
    return shipped_models() if make is None else make(tmp_path / "like")


def exclusive(cascade: Cascade) -> bool:
    """The segmenter's classes are exclusive (a softmax): one class per pixel at most."""
    return cascade.segmenter.spec.output.activation == "softmax"


def null_cascade(like: Path, tmp_path: Path, verdict: str) -> Cascade:
    repo = write_null_repository(like, tmp_path / f"null-{verdict}", verdict)  # type: ignore[arg-type]
    return Cascade.load(repo, max_batch=8, threads=1)


def test_null_pair_has_the_io_of_the_pair_it_stands_in_for(like: Path, tmp_path: Path) -> None:
    originals = load_repository(like)
    for verdict in VERDICTS:
        nulls = load_repository(write_null_repository(like, tmp_path / verdict, verdict))
        for role, files in originals.items():
            null = nulls[role].spec.model_dump(exclude={"description"})
            assert null == files.spec.model_dump(exclude={"description"}), (verdict, role)
            assert verdict in nulls[role].spec.description


def test_unknown_verdict_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="verdict must be one of"):
        write_null_repository(shipped_models(), tmp_path, "broken")  # type: ignore[arg-type]


def test_clean_never_segments(like: Path, tmp_path: Path) -> None:
    cascade = null_cascade(like, tmp_path, "clean")
    try:
        results = cascade.run([blobs(), grey(0), grey(255), textured()])
        spec = cascade.segmenter.spec
        for result in results:
            assert result.windows_classified > 0
            assert result.windows_segmented == 0 and not result.bands
            assert (result.scores < cascade.gate).all(), result.scores
            assert strip_defects(result, spec) == []
    finally:
        cascade.close()


def test_defective_is_every_class_at_every_pixel(like: Path, tmp_path: Path) -> None:
    cascade = null_cascade(like, tmp_path, "defective")
    try:
        spec = cascade.segmenter.spec
        for strip in (grey(), textured()):
            (result,) = cascade.run([strip])
            windows = cascade.segmenter.inputs.windows(H, W)
            assert result.windows_segmented == len(windows)
            defects = strip_defects(result, spec)
            # A softmax's classes are exclusive: every pixel is then the first class.
            every = [1] if exclusive(cascade) else list(range(1, spec.num_classes + 1))
            assert [d["class_id"] for d in defects] == every
            for defect in defects:
                assert defect["area_px"] == H * W, defect["name"]
                assert rle.decode(defect["mask_rle"], H, W).all(), defect["name"]
    finally:
        cascade.close()


def test_contrast_flags_dark_and_bright_blobs_only(like: Path, tmp_path: Path) -> None:
    cascade = null_cascade(like, tmp_path, "contrast")
    try:
        spec = cascade.segmenter.spec
        quiet, busy, marked = cascade.run([grey(), textured(), blobs()])
        for result in (quiet, busy):
            assert result.windows_segmented == 0 and strip_defects(result, spec) == []
        assert marked.windows_segmented > 0
        defects = {d["class_id"]: d for d in strip_defects(marked, spec)}
        # Classes 1 and 3 are dark, 2 and 4 bright; with exclusive classes only 1 and 2.
        dark, bright = blob_mask(DARK_BLOB), blob_mask(BRIGHT_BLOB)
        assert set(defects) == ({1, 2} if exclusive(cascade) else {1, 2, 3, 4})
        tile_feed = spec.feed.mode == "tile"
        for class_id, defect in defects.items():
            mask = rle.decode(defect["mask_rle"], H, W)
            blob, other = (dark, bright) if class_id % 2 else (bright, dark)
            if tile_feed:  # every pixel is its own verdict: the mask is the blob
                np.testing.assert_array_equal(mask, blob, err_msg=str(class_id))
            else:  # resized to the model and back: the blob, up to its resampled edges
                assert (mask & blob).sum() >= 0.8 * blob.sum(), class_id
                assert (mask & ~blob).sum() <= 0.3 * blob.sum(), class_id
                assert not (mask & other).any(), class_id
    finally:
        cascade.close()
