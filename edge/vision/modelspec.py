"""What a model needs to be used correctly: its configuration, validated.

A model repository is laid out like Triton's: one folder per model, its ``config.toml`` beside
numbered version folders, each holding ``model.onnx``::

    models/
      classifier/config.toml
      classifier/1/model.onnx
      segmenter/config.toml
      segmenter/1/model.onnx

The newest version (the highest number) is served unless ``version`` is set in the config. A
model whose folder has no ``config.toml`` may carry the same table as JSON in its ONNX metadata
under the key ``edge``.
Plants serve their own models (Keras ResNet50 at 224x224 NHWC with caffe preprocessing, a
PyTorch ResNet18 with softmax logits, ...) by writing a config, without retraining.
"""

from __future__ import annotations

import json
import tomllib
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal, Self

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from build_engine.sidecar import file_sha256 as file_sha256  # one digest for model and engine
from edge.settings import format_validation_error

CONFIG_FILE = "config.toml"
MODEL_FILE = "model.onnx"
METADATA_KEY = "edge"

# Keras' "caffe" preprocessing: BGR order, ImageNet mean subtracted, no scaling.
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)

PRESETS: dict[str, dict[str, Any]] = {
    "imagenet": {"scale": 1 / 255, "mean": IMAGENET_MEAN_RGB, "std": IMAGENET_STD_RGB},
    "caffe": {"scale": 1.0, "mean": CAFFE_MEAN_BGR, "std": (1.0, 1.0, 1.0)},
}

Role = Literal["classifier", "segmenter"]


def _same(given: Any, preset: float | tuple[float, ...]) -> bool:
    try:
        return bool(np.allclose(np.asarray(given, float), np.asarray(preset, float)))
    except (TypeError, ValueError):
        return False


PositiveFloat = Annotated[float, Field(gt=0)]


def _one_value(value: Any) -> Any:
    """A bare number where "one value, or one per channel/class" is allowed: ``mean = 0.0``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return (value,)
    return value


# One value for all channels/classes (a number or a 1-list), or one per channel/class.
OneOrMore = BeforeValidator(_one_value)


class ModelConfigError(ValueError):
    """A model folder or config that cannot be served; the message names the file and the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InputSpec(_Strict):
    """How pixels become the model's input tensor: ``x = (pixel * scale - mean) / std``."""

    name: str | None = None  # None: the model's first input
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    channels: Literal[1, 3] = 1
    color_order: Literal["rgb", "bgr"] = "rgb"
    # A preset fills scale/mean/std/color_order; explicit keys beside it are an error.
    normalization: Literal["custom", "unit", "imagenet", "caffe"] = "unit"
    scale: float = 1.0 / 255.0
    mean: Annotated[tuple[float, ...], OneOrMore] = (0.0,)
    std: Annotated[tuple[PositiveFloat, ...], OneOrMore] = (1.0,)

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        preset = data.get("normalization", "unit" if "mean" not in data else "custom")
        values = PRESETS.get(preset)
        if values is not None:
            # A preset's own values may be repeated (a dumped spec does); others conflict.
            conflicting = sorted(
                key
                for key in ("scale", "mean", "std")
                if key in data and not _same(data[key], values[key])
            )
            if conflicting:
                raise ValueError(
                    f"normalization = {preset!r} sets {conflicting} itself; remove them "
                    "or use normalization = 'custom'"
                )
            data = dict(data, **values)
            if preset == "caffe":
                data.setdefault("color_order", "bgr")
        return dict(data, normalization=preset)

    @model_validator(mode="after")
    def _per_channel(self) -> Self:
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                raise ValueError(
                    f"{key} has {len(values)} values; give 1 or one per channel ({self.channels})"
                )
        return self


class FeedSpec(_Strict):
    """How a strip is fed: cut into tiles of the model's size, or resized whole to it."""

    mode: Literal["tile", "resize"] = "tile"
    height: int = Field(256, gt=0)
    width: int = Field(256, gt=0)
    # Tiles across/down; 0 picks the fewest that cover the strip. Tiles always overlap evenly
    # to cover it exactly: 7 tiles of 256 across 1600 start every 224 px.
    columns: int = Field(0, ge=0)
    rows: int = Field(0, ge=0)


class OutputSpec(_Strict):
    name: str | None = None  # None: the model's first output
    # sigmoid: logits, one per class. softmax: logits over classes (+ a background logit at
    # background_index, whose probability is dropped). none: already probabilities.
    activation: Literal["sigmoid", "softmax", "none"] = "sigmoid"
    background_index: int | None = Field(None, ge=0)
    layout: Literal["NCHW", "NHWC"] = "NCHW"  # segmenters only


class ThresholdSpec(_Strict):
    # classifier: a tile goes to the segmenter when any class's score reaches its gate.
    gate: Annotated[tuple[float, ...], OneOrMore] = (0.5,)
    # segmenter: pixel probability threshold and minimum connected-component area (full-frame px).
    mask: Annotated[tuple[float, ...], OneOrMore] = (0.5,)
    min_area: Annotated[tuple[int, ...], OneOrMore] = (0,)


class ModelSpec(_Strict):
    name: str
    role: Role
    classes: tuple[str, ...] = Field(min_length=1)
    version: int | None = Field(None, ge=1)
    description: str = ""
    input: InputSpec = InputSpec()
    feed: FeedSpec = FeedSpec()
    output: OutputSpec = OutputSpec()
    thresholds: ThresholdSpec = ThresholdSpec()

    @model_validator(mode="after")
    def _per_class(self) -> Self:
        for key in ("gate", "mask", "min_area"):
            values = getattr(self.thresholds, key)
            if len(values) not in (1, len(self.classes)):
                raise ValueError(
                    f"thresholds.{key} has {len(values)} values; give 1 or one per class "
                    f"({len(self.classes)}: {list(self.classes)})"
                )
        background = self.output.background_index
        if background is not None and background > len(self.classes):
            raise ValueError(
                f"output.background_index = {background} is past the last of "
                f"{len(self.classes) + 1} logits (classes + background)"
            )
        return self

    def per_class(self, key: Literal["gate", "mask", "min_area"]) -> list[float]:
        values = getattr(self.thresholds, key)
        return list(values) * len(self.classes) if len(values) == 1 else list(values)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


class ModelFiles(BaseModel):
    """A model resolved on disk: its spec, its ONNX file, and an id that names exactly it."""

    model_config = ConfigDict(frozen=True)

    spec: ModelSpec
    onnx_path: Path
    version: int

    @cached_property
    def sha256(self) -> str:
        return file_sha256(self.onnx_path)

    @property
    def model_id(self) -> str:
        return f"{self.spec.name}:{self.version}:{self.sha256[:12]}"


def parse_spec(data: dict[str, Any], source: str) -> ModelSpec:
    try:
        return ModelSpec.model_validate(data)
    except ValidationError as exc:
        raise ModelConfigError(f"{source}: {format_validation_error(exc)}") from None


def resolve_model_dir(model_dir: Path) -> ModelFiles:
    """Read ``model_dir/config.toml`` and find the version to serve."""
    config_path = model_dir / CONFIG_FILE
    versions = _versions(model_dir)
    if config_path.is_file():
        try:
            data = tomllib.loads(config_path.read_text())
        except tomllib.TOMLDecodeError as exc:
            raise ModelConfigError(f"{config_path}: not valid TOML: {exc}") from None
        data.setdefault("name", model_dir.name)
        spec = parse_spec(data, str(config_path))
    else:
        spec = None
    if not versions:
        raise ModelConfigError(
            f"{model_dir}: no version folder with {MODEL_FILE} (e.g. 1/{MODEL_FILE})"
        )
    wanted = spec.version if spec and spec.version else max(versions)
    if wanted not in versions:
        raise ModelConfigError(
            f"{config_path}: version = {wanted}, but only versions {sorted(versions)} exist"
        )
    onnx_path = versions[wanted]
    if spec is None:
        spec = spec_from_onnx_metadata(onnx_path, default_name=model_dir.name)
    return ModelFiles(spec=spec, onnx_path=onnx_path, version=wanted)


def _versions(model_dir: Path) -> dict[int, Path]:
    if not model_dir.is_dir():
        raise ModelConfigError(f"{model_dir}: not a folder")
    found = {}
    for child in model_dir.iterdir():
        if child.is_dir() and child.name.isdigit() and (child / MODEL_FILE).is_file():
            found[int(child.name)] = child / MODEL_FILE
    return found


def spec_from_onnx_metadata(onnx_path: Path, default_name: str) -> ModelSpec:
    import onnxruntime as ort  # local: only this fallback needs a session just for metadata

    try:
        meta = ort.InferenceSession(
            str(onnx_path), providers=["CPUExecutionProvider"]
        ).get_modelmeta()
    except Exception as exc:
        raise ModelConfigError(f"{onnx_path}: cannot be loaded by ONNX Runtime: {exc}") from None
    text = meta.custom_metadata_map.get(METADATA_KEY)
    if text is None:
        raise ModelConfigError(
            f"{onnx_path}: no {CONFIG_FILE} beside its version folder and no '{METADATA_KEY}' "
            "entry in its ONNX metadata; write a config.toml (see docs/models.md)"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelConfigError(
            f"{onnx_path}: metadata '{METADATA_KEY}' is not JSON: {exc}"
        ) from None
    data.setdefault("name", default_name)
    return parse_spec(data, f"{onnx_path} metadata '{METADATA_KEY}'")


def load_repository(root: Path) -> dict[Role, ModelFiles]:
    """Find the classifier and the segmenter in a model repository folder."""
    if not root.is_dir():
        raise ModelConfigError(f"model repository {root} is not a folder")
    by_role: dict[str, ModelFiles] = {}
    for child in sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(("_", "."))
    ):
        if not (child / CONFIG_FILE).is_file() and not _versions(child):
            continue
        files = resolve_model_dir(child)
        role = files.spec.role
        if role in by_role:
            raise ModelConfigError(
                f"model repository {root} has two {role}s: {by_role[role].onnx_path.parent.parent.name!r} "
                f"and {child.name!r}"
            )
        by_role[role] = files
    missing = [r for r in ("classifier", "segmenter") if r not in by_role]
    if missing:
        raise ModelConfigError(f"model repository {root} has no {' and no '.join(missing)}")
    return by_role  # type: ignore[return-value]
