"""Model configs: plants' real model forms are served by config alone; bad configs say what is wrong."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from edge.vision.modelspec import (
    CAFFE_MEAN_BGR,
    IMAGENET_MEAN_RGB,
    IMAGENET_STD_RGB,
    InputSpec,
    ModelConfigError,
    load_repository,
    parse_spec,
    resolve_model_dir,
)
from tests.plant_models import (
    ALL_PLANT_MODELS,
    PlantModel,
    efficientnet_binary_512,
    keras_resnet50_binary,
    keras_resnet50_unet,
    to_toml,
    write_model_dir,
)

PLANT_IDS = [factory.__name__ for factory in ALL_PLANT_MODELS]


@pytest.fixture(params=ALL_PLANT_MODELS, ids=PLANT_IDS)
def plant(request: pytest.FixtureRequest) -> PlantModel:
    return request.param()


def _session(model: PlantModel) -> ort.InferenceSession:
    return ort.InferenceSession(model.onnx_bytes, providers=["CPUExecutionProvider"])


def _random_input(model: PlantModel, batch: int) -> np.ndarray:
    shape = (batch, *model.input_shape[1:])
    # Caffe inputs are pixel - mean (about +-128); the others are near unit scale.
    spread = 60.0 if model.config["input"]["normalization"] == "caffe" else 1.0
    return np.random.default_rng(batch).normal(0.0, spread, shape).astype(np.float32)


# -- the plant models ----------------------------------------------------------------------------


def test_plant_config_validates(plant: PlantModel) -> None:
    spec = parse_spec(plant.config, plant.name)
    assert spec.name == plant.name
    assert list(spec.classes) == plant.config["classes"]
    assert spec.input.layout == plant.config["input"]["layout"]
    assert spec.feed.mode == plant.config["feed"]["mode"]
    assert (spec.feed.height, spec.feed.width) == (
        plant.config["feed"]["height"],
        plant.config["feed"]["width"],
    )


def test_plant_config_toml_round_trips(plant: PlantModel) -> None:
    import tomllib

    assert tomllib.loads(to_toml(plant.config)) == plant.config


def test_plant_model_dir_resolves(plant: PlantModel, tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path, plant)
    files = resolve_model_dir(model_dir)
    assert files.spec == parse_spec(plant.config, plant.name)
    assert files.version == 1
    assert files.onnx_path == model_dir / "1" / "model.onnx"
    assert files.onnx_path.read_bytes() == plant.onnx_bytes
    assert re.fullmatch(rf"{plant.name}:1:[0-9a-f]{{12}}", files.model_id)
    assert files.sha256.startswith(files.model_id.rsplit(":", 1)[1])


@pytest.mark.parametrize("batch", [1, 3])
def test_plant_onnx_runs_with_declared_shapes(plant: PlantModel, batch: int) -> None:
    session = _session(plant)
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert inp.shape == ["N", *plant.input_shape[1:]]
    if plant.config["input"].get("name"):
        assert inp.name == plant.config["input"]["name"]
    if plant.config["output"].get("name"):
        assert out.name == plant.config["output"]["name"]
    x = _random_input(plant, batch)
    (y,) = session.run(None, {inp.name: x})
    assert out.shape[0] == "N"
    assert list(y.shape) == [batch, *out.shape[1:]]
    np.testing.assert_allclose(y, plant.expected(x), rtol=1e-4, atol=1e-5)


def test_plant_forms_match_the_plants() -> None:
    """The I/O forms are the ones plants run; a regression here would test the wrong thing."""
    shapes = {}
    for factory in ALL_PLANT_MODELS:
        model = factory()
        session = _session(model)
        shapes[model.name] = (session.get_inputs()[0].shape, session.get_outputs()[0].shape)
    assert shapes == {
        "keras_resnet50_binary": (["N", 224, 224, 3], ["N", 1]),
        "keras_resnet50_unet": (["N", 128, 800, 3], ["N", 128, 800, 4]),
        "pytorch_resnet18_softmax": (["N", 3, 224, 224], ["N", 2]),
        "resnet50_multilabel": (["N", 3, 256, 256], ["N", 3]),
        "efficientnet_binary_512": (["N", 3, 512, 512], ["N", 1]),
    }


def test_classifier_score_rises_with_brightness() -> None:
    model = efficientnet_binary_512()
    session = _session(model)
    scores = []
    for level in (-2.0, 0.0, 2.0):
        x = np.full((1, *model.input_shape[1:]), level, np.float32)
        scores.append(float(session.run(None, {"input": x})[0][0, 0]))
    assert scores == sorted(scores) and len(set(scores)) == 3


def test_classifier_sees_channel_order() -> None:
    """Swapping B and R must change the score, so a test can catch a wrong color order."""
    model = keras_resnet50_binary()
    x = np.zeros((1, 224, 224, 3), np.float32)
    x[..., 0] = 50.0
    assert not np.allclose(model.expected(x), model.expected(x[..., ::-1].copy()))


def test_segmenter_is_per_pixel() -> None:
    model = keras_resnet50_unet()
    x = np.zeros((1, 128, 800, 3), np.float32)
    x[0, 5, 7] = [100.0, -50.0, 20.0]
    y = _session(model).run(None, {"input": x})[0]
    background = y[0, 0, 0]
    changed = np.argwhere(~np.isclose(y[0], background).all(axis=-1))
    assert changed.tolist() == [[5, 7]]


# -- presets -------------------------------------------------------------------------------------


def test_caffe_preset() -> None:
    spec = InputSpec.model_validate({"channels": 3, "normalization": "caffe"})
    assert spec.color_order == "bgr"
    assert spec.scale == 1.0
    assert spec.mean == CAFFE_MEAN_BGR
    assert spec.std == (1.0, 1.0, 1.0)


def test_caffe_preset_keeps_explicit_color_order() -> None:
    spec = InputSpec.model_validate({"channels": 3, "normalization": "caffe", "color_order": "rgb"})
    assert spec.color_order == "rgb"
    assert spec.mean == CAFFE_MEAN_BGR


def test_imagenet_preset() -> None:
    spec = InputSpec.model_validate({"channels": 3, "normalization": "imagenet"})
    assert spec.color_order == "rgb"
    assert spec.scale == pytest.approx(1 / 255)
    assert spec.mean == IMAGENET_MEAN_RGB
    assert spec.std == IMAGENET_STD_RGB


def test_unit_is_the_default() -> None:
    spec = InputSpec()
    assert (spec.normalization, spec.scale, spec.mean, spec.std) == (
        "unit",
        1 / 255,
        (0.0,),
        (1.0,),
    )


def test_mean_without_preset_is_custom() -> None:
    spec = InputSpec.model_validate({"channels": 3, "mean": [1, 2, 3], "scale": 1.0})
    assert spec.normalization == "custom"
    assert spec.mean == (1.0, 2.0, 3.0)


def test_per_class_thresholds_expand() -> None:
    spec = parse_spec(copy.deepcopy(keras_resnet50_unet().config), "unet")
    assert spec.per_class("gate") == [0.5] * 4
    assert spec.num_classes == 4


# -- bad configs ---------------------------------------------------------------------------------


def _base() -> dict[str, Any]:
    return copy.deepcopy(keras_resnet50_unet().config)


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    *path, last = dotted.split(".")
    node = data
    for key in path:
        node = node.setdefault(key, {})
    node[last] = value
    return data


_CUSTOM = {"layout": "NHWC", "channels": 3, "normalization": "custom", "scale": 1.0}

BAD_CONFIGS = [
    # (dotted key, value, substrings the message must contain)
    ("thresholds.gate", [0.3, 0.5, 0.7], ["thresholds.gate", "3 values"]),
    ("thresholds.min_area", [1, 2], ["thresholds.min_area"]),
    ("input.layout", "CHW", ["input.layout"]),
    ("colour", "rgb", ["colour", "Extra inputs"]),
    ("input.colour", "rgb", ["input.colour"]),
    ("input", {**_CUSTOM, "mean": [0.5, 0.5]}, ["input", "mean has 2 values", "per channel (3)"]),
    ("input", {**_CUSTOM, "std": [1.0, 1.0]}, ["input", "std has 2 values"]),
    ("input", {**_CUSTOM, "std": [1.0, 0.0, 1.0]}, ["input.std.1"]),
    ("input.channels", 2, ["input.channels"]),
    ("feed.mode", "crop", ["feed.mode"]),
    ("feed.height", 0, ["feed.height"]),
    ("output.activation", "relu", ["output.activation"]),
    ("output.background_index", -1, ["output.background_index"]),
    ("role", "detector", ["role"]),
    ("classes", [], ["classes"]),
    ("version", 0, ["version"]),
]


@pytest.mark.parametrize(
    ("key", "value", "needles"), BAD_CONFIGS, ids=[f"{b[0]}-{b[2][-1]}" for b in BAD_CONFIGS]
)
def test_bad_config_names_the_key(key: str, value: Any, needles: list[str]) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_spec(_set(_base(), key, value), "models/unet/config.toml")
    message = str(info.value)
    assert message.startswith("models/unet/config.toml: ")
    for needle in needles:
        assert needle in message


@pytest.mark.parametrize("key", ["mean", "scale", "std"])
def test_preset_with_explicit_values_is_an_error(key: str) -> None:
    conflicting = {"mean": [1.0, 1.0, 1.0], "scale": 0.5, "std": [2.0, 2.0, 2.0]}[key]
    data = _set(_base(), f"input.{key}", conflicting)
    with pytest.raises(ModelConfigError, match=rf"'caffe' sets \['{key}'\] itself"):
        parse_spec(data, "cfg")


def test_softmax_background_past_last_logit() -> None:
    data = copy.deepcopy(_plant_config("pytorch_resnet18_softmax"))
    data["output"]["background_index"] = 2  # logits are [bg, defect]: indices 0 and 1
    with pytest.raises(ModelConfigError, match="background_index"):
        parse_spec(data, "cfg")


def _plant_config(name: str) -> dict[str, Any]:
    (config,) = [m.config for m in (f() for f in ALL_PLANT_MODELS) if m.name == name]
    return config


def test_bad_config_in_file_names_the_file(tmp_path: Path) -> None:
    model = keras_resnet50_unet()
    model_dir = write_model_dir(tmp_path, model)
    bad = _set(copy.deepcopy(model.config), "thresholds.gate", [0.1, 0.2, 0.3])
    (model_dir / "config.toml").write_text(to_toml(bad))
    with pytest.raises(ModelConfigError) as info:
        resolve_model_dir(model_dir)
    assert str(model_dir / "config.toml") in str(info.value)
    assert "thresholds.gate" in str(info.value)


def test_config_that_is_not_toml_names_the_file(tmp_path: Path) -> None:
    model_dir = write_model_dir(tmp_path, keras_resnet50_unet())
    (model_dir / "config.toml").write_text('name = "unet"\nrole = segmenter\n')
    with pytest.raises(ModelConfigError, match="not valid TOML") as info:
        resolve_model_dir(model_dir)
    assert str(model_dir / "config.toml") in str(info.value)


# -- versions and repositories -------------------------------------------------------------------


def test_newest_version_is_served(tmp_path: Path) -> None:
    model = keras_resnet50_binary()
    write_model_dir(tmp_path, model, version=1)
    model_dir = write_model_dir(tmp_path, model, version=2)
    (model_dir / "10").mkdir()  # a version folder without model.onnx is not a version
    files = resolve_model_dir(model_dir)
    assert files.version == 2
    assert files.onnx_path == model_dir / "2" / "model.onnx"


def test_pinned_version_is_served(tmp_path: Path) -> None:
    model = keras_resnet50_binary()
    pinned = PlantModel(
        model.name, {**model.config, "version": 1}, model.onnx_bytes, model.expected
    )
    write_model_dir(tmp_path, pinned, version=1)
    model_dir = write_model_dir(tmp_path, pinned, version=2)
    assert resolve_model_dir(model_dir).version == 1


def test_pinned_version_that_does_not_exist(tmp_path: Path) -> None:
    model = keras_resnet50_binary()
    pinned = PlantModel(
        model.name, {**model.config, "version": 3}, model.onnx_bytes, model.expected
    )
    model_dir = write_model_dir(tmp_path, pinned, version=1)
    with pytest.raises(
        ModelConfigError, match=r"version = 3, but only versions \[1\] exist"
    ) as info:
        resolve_model_dir(model_dir)
    assert str(model_dir / "config.toml") in str(info.value)


def test_model_dir_without_versions(tmp_path: Path) -> None:
    model_dir = tmp_path / "empty"
    model_dir.mkdir()
    (model_dir / "config.toml").write_text(to_toml(keras_resnet50_binary().config))
    with pytest.raises(ModelConfigError, match="no version folder"):
        resolve_model_dir(model_dir)


def test_model_dir_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="not a folder"):
        resolve_model_dir(tmp_path / "missing")


def test_repository_with_both_roles(tmp_path: Path) -> None:
    write_model_dir(tmp_path, keras_resnet50_binary())
    write_model_dir(tmp_path, keras_resnet50_unet())
    (tmp_path / "notes").mkdir()  # a folder that is no model is skipped
    (tmp_path / "_old").mkdir()
    repo = load_repository(tmp_path)
    assert repo["classifier"].spec.name == "keras_resnet50_binary"
    assert repo["segmenter"].spec.name == "keras_resnet50_unet"


def test_repository_without_segmenter(tmp_path: Path) -> None:
    write_model_dir(tmp_path, keras_resnet50_binary())
    with pytest.raises(ModelConfigError, match="has no segmenter"):
        load_repository(tmp_path)


def test_repository_with_two_classifiers(tmp_path: Path) -> None:
    write_model_dir(tmp_path, keras_resnet50_binary())
    write_model_dir(tmp_path, efficientnet_binary_512())
    write_model_dir(tmp_path, keras_resnet50_unet())
    with pytest.raises(ModelConfigError, match="two classifiers"):
        load_repository(tmp_path)


def test_repository_that_is_not_a_folder(tmp_path: Path) -> None:
    with pytest.raises(ModelConfigError, match="not a folder"):
        load_repository(tmp_path / "missing")


# -- config in ONNX metadata ---------------------------------------------------------------------


def test_metadata_fallback(tmp_path: Path) -> None:
    model = keras_resnet50_unet()
    model_dir = write_model_dir(tmp_path, model, config_in_metadata=True)
    assert not (model_dir / "config.toml").exists()
    files = resolve_model_dir(model_dir)
    assert files.spec == parse_spec(model.config, "expected")


def test_metadata_fallback_takes_the_folder_name(tmp_path: Path) -> None:
    model = keras_resnet50_unet()
    config = {k: v for k, v in model.config.items() if k != "name"}
    renamed = PlantModel("line2_unet", config, model.onnx_bytes, model.expected)
    files = resolve_model_dir(write_model_dir(tmp_path, renamed, config_in_metadata=True))
    assert files.spec.name == "line2_unet"


def test_no_config_and_no_metadata(tmp_path: Path) -> None:
    model_dir = tmp_path / "bare"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(keras_resnet50_unet().onnx_bytes)
    with pytest.raises(ModelConfigError, match=r"no config\.toml"):
        resolve_model_dir(model_dir)


def test_bad_metadata_config_names_the_source(tmp_path: Path) -> None:
    model = keras_resnet50_unet()
    bad = PlantModel(
        model.name, {**model.config, "role": "detector"}, model.onnx_bytes, model.expected
    )
    model_dir = write_model_dir(tmp_path, bad, config_in_metadata=True)
    with pytest.raises(ModelConfigError, match=r"metadata 'edge'.*role"):
        resolve_model_dir(model_dir)


def test_metadata_that_is_not_json(tmp_path: Path) -> None:
    import onnx
    from onnx import helper

    model = keras_resnet50_unet()
    proto = onnx.load_from_string(model.onnx_bytes)
    helper.set_model_props(proto, {"edge": "role = 'segmenter'"})
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(proto.SerializeToString())
    with pytest.raises(ModelConfigError, match="is not JSON"):
        resolve_model_dir(model_dir)


def test_unloadable_onnx_without_config(tmp_path: Path) -> None:
    model_dir = tmp_path / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "1" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelConfigError, match="cannot be loaded by ONNX Runtime"):
        resolve_model_dir(model_dir)


def test_spec_dump_validates_back_to_itself() -> None:
    """Whoever embeds a resolved spec (e.g. as ONNX metadata) must be able to load it again."""
    spec = parse_spec(keras_resnet50_binary().config, "k")
    again = parse_spec(json.loads(spec.model_dump_json()), "dump")
    assert again == spec


# -- one value: a number where the docs say "one value, or one per channel/class" ----------------

SCALAR_KEYS = [
    ("input", "mean", 0.25),
    ("input", "std", 2.0),
    ("thresholds", "gate", 0.3),
    ("thresholds", "mask", 0.4),
    ("thresholds", "min_area", 600),
]


def _custom_input(data: dict[str, Any]) -> dict[str, Any]:
    data["input"] = {**_CUSTOM}  # mean/std are custom normalization's, not the caffe preset's
    return data


@pytest.mark.parametrize(("table", "key", "value"), SCALAR_KEYS, ids=[k for _, k, _ in SCALAR_KEYS])
def test_one_value_may_be_a_bare_number(table: str, key: str, value: float) -> None:
    scalar = parse_spec(_set(_custom_input(_base()), f"{table}.{key}", value), "scalar")
    listed = parse_spec(_set(_custom_input(_base()), f"{table}.{key}", [value]), "list")
    assert scalar == listed
    assert getattr(getattr(scalar, table), key) == (value,)


def test_bare_numbers_in_a_config_file(tmp_path: Path) -> None:
    model = keras_resnet50_unet()
    config = copy.deepcopy(model.config)
    config["input"] = {**_CUSTOM, "mean": 0.0, "std": 1.0}
    config["thresholds"] = {"gate": 0.5, "mask": 0.5, "min_area": 0}
    model_dir = write_model_dir(
        tmp_path, PlantModel(model.name, config, model.onnx_bytes, model.expected)
    )
    assert "mask = 0.5\n" in (model_dir / "config.toml").read_text()
    spec = resolve_model_dir(model_dir).spec
    assert spec.input.mean == (0.0,) and spec.input.std == (1.0,)
    assert spec.per_class("mask") == [0.5] * 4 and spec.per_class("min_area") == [0] * 4


WRONG_LENGTHS = [
    ("input.mean", [0.1, 0.2], ["input", "mean has 2 values", "per channel (3)"]),
    ("input.std", [1.0, 1.0], ["input", "std has 2 values"]),
    ("thresholds.gate", [0.3, 0.5], ["thresholds.gate has 2 values", "per class (4"]),
    ("thresholds.mask", [0.3, 0.5, 0.7], ["thresholds.mask has 3 values", "per class (4"]),
    ("thresholds.min_area", [1, 2, 3, 4, 5], ["thresholds.min_area has 5 values"]),
]


@pytest.mark.parametrize(
    ("key", "value", "needles"), WRONG_LENGTHS, ids=[w[0] for w in WRONG_LENGTHS]
)
def test_wrong_length_list_is_still_refused(key: str, value: Any, needles: list[str]) -> None:
    with pytest.raises(ModelConfigError) as info:
        parse_spec(_set(_custom_input(_base()), key, value), "cfg")
    for needle in needles:
        assert needle in str(info.value)


@pytest.mark.parametrize(
    ("key", "value"), [("thresholds.mask", "0.5"), ("thresholds.min_area", 0.5), ("input.std", 0)]
)
def test_a_bad_bare_value_names_the_key(key: str, value: Any) -> None:
    with pytest.raises(ModelConfigError, match=re.escape(key.split(".")[-1])):
        parse_spec(_set(_custom_input(_base()), key, value), "cfg")


# -- a config that contradicts its model's outputs names the key to fix --------------------------


def _plant_model(name: str) -> PlantModel:
    (model,) = [m for m in (f() for f in ALL_PLANT_MODELS) if m.name == name]
    return model


def _real_output(model: PlantModel) -> np.ndarray:
    session = _session(model)
    (output,) = session.run(None, {session.get_inputs()[0].name: _random_input(model, 1)})
    return output


def test_background_channel_without_background_index_says_set_it() -> None:
    from edge.vision.preprocess import OutputAdapter

    model = _plant_model(
        "pytorch_resnet18_softmax"
    )  # 2 logits [background, defect], classes = ["defect"]
    data = copy.deepcopy(model.config)
    del data["output"]["background_index"]
    adapter = OutputAdapter(parse_spec(data, "cfg"))
    with pytest.raises(ValueError, match=re.escape("set output.background_index")) as info:
        adapter.scores(_real_output(model))
    assert "[1, 2]" in str(info.value) and "classes = ['defect'] has 1" in str(info.value)


def test_segmenter_with_one_more_channel_than_classes_says_set_background_index() -> None:
    from edge.vision.preprocess import OutputAdapter

    model = keras_resnet50_unet()  # 4 channels out
    data = _set(copy.deepcopy(model.config), "classes", ["1", "2", "3"])
    adapter = OutputAdapter(parse_spec(data, "cfg"))
    with pytest.raises(ValueError) as info:
        adapter.maps(_real_output(model), 128, 800)
    message = str(info.value)
    assert "output.background_index" in message and "output.activation = 'softmax'" in message
    assert "[1, 128, 800, 4]" in message


def test_background_index_on_a_model_without_one_says_remove_it() -> None:
    from edge.vision.preprocess import OutputAdapter

    data = _set(_plant_config("keras_resnet50_unet"), "output.activation", "softmax")
    data["output"]["background_index"] = 0
    adapter = OutputAdapter(parse_spec(data, "cfg"))
    with pytest.raises(ValueError, match=re.escape("remove output.background_index")):
        adapter.maps(_real_output(keras_resnet50_unet()), 128, 800)


def test_output_layout_that_does_not_match_names_it_and_the_shape() -> None:
    from edge.vision.preprocess import OutputAdapter

    model = keras_resnet50_unet()  # NHWC output [N, 128, 800, 4]
    data = _set(copy.deepcopy(model.config), "output.layout", "NCHW")
    adapter = OutputAdapter(parse_spec(data, "cfg"))
    with pytest.raises(ValueError) as info:
        adapter.maps(_real_output(model), 128, 800)
    message = str(info.value)
    assert "[1, 128, 800, 4]" in message
    assert "output.layout = 'NCHW'" in message and "set output.layout = 'NHWC'" in message


def test_a_matching_output_still_reads() -> None:
    from edge.vision.preprocess import OutputAdapter

    model = keras_resnet50_unet()
    raw = _real_output(model)
    adapter = OutputAdapter(parse_spec(copy.deepcopy(model.config), "cfg"))
    np.testing.assert_array_equal(adapter.float_maps(raw, 128, 800), raw.transpose(0, 3, 1, 2))
    # What the thresholds take: the same maps as uint8 round(255 * p), halves up.
    levels = raw.transpose(0, 3, 1, 2) * np.float32(255) + np.float32(0.5)
    np.testing.assert_array_equal(adapter.maps(raw, 128, 800), levels.astype(np.uint8))
