"""The models a build is given: the facts about each that the build needs and records, and the
small reader ``python -m build_engine`` finds them with.

edge fills ``ModelFacts`` in from its own validated model configs (``edge build``,
``--rebuild-stale``). Standalone, this reader knows only the layout of an edge model repository
(Triton-style: ``config.toml`` beside numbered version folders holding ``model.onnx``; or the
config as JSON under the ONNX metadata key ``edge``) and the two keys the build records,
``name`` and ``role``; the rest of the config is recorded as written and validated by edge when
it serves the model.
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from build_engine.sidecar import CONFIG_FILE, file_sha256

MODEL_FILE = "model.onnx"
METADATA_KEY = "edge"
M = TypeVar("M")


class ModelError(ValueError):
    """A model folder or file the build cannot read; the message names it and the key."""


@dataclass(frozen=True)
class ModelFacts:
    """One model to build: where its ONNX is and what its sidecar records about it."""

    name: str
    version: int
    role: str  # classifier, segmenter
    onnx_path: Path
    sha256: str  # of onnx_path: what an engine is checked against before it is loaded
    spec: dict[str, Any] = field(default_factory=dict)  # the model's config, recorded as is
    config: Path | None = None  # its config.toml, copied beside the engine's version folder
    # The prologue and epilogue to fuse around the model (build_engine.graph.GraphIO, as a
    # dict); None builds the model as it is. edge's reader fills it from the validated config.
    graph: dict[str, Any] | None = None

    @property
    def model_id(self) -> str:
        return f"{self.name}:{self.version}:{self.sha256[:12]}"


def find_models(paths: Iterable[Path]) -> list[ModelFacts]:
    """Models named on the command line: a repository, a model folder, or a model's ONNX file."""
    return walk_models(
        paths, for_dir=_model_for_dir, for_onnx=_model_for_onnx, name=lambda m: m.name,
        error=ModelError,
    )  # fmt: skip


def walk_models(
    paths: Iterable[Path],
    *,
    for_dir: Callable[[Path], M],
    for_onnx: Callable[[Path], M],
    name: Callable[[M], str],
    error: type[Exception],
) -> list[M]:
    """The repository walk both readers share (this one and edge's validated one): each path is
    an ONNX file, a model folder, or a folder of model folders; a name may come once."""
    found: list[M] = []
    for path in paths:
        if path.is_file():
            found.append(for_onnx(path))
        elif path.is_dir() and ((path / CONFIG_FILE).is_file() or _has_versions(path)):
            found.append(for_dir(path))
        elif path.is_dir():
            children = [c for c in sorted(path.iterdir()) if c.is_dir() and _is_model_dir(c)]
            if not children:
                raise error(f"{path}: neither a model folder nor a repository of them")
            found.extend(for_dir(c) for c in children)
        else:
            raise error(f"{path} does not exist")
    names = [name(f) for f in found]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise error(f"model(s) {duplicates} named more than once")
    return found


def _has_versions(path: Path) -> bool:
    return any(c.is_dir() and c.name.isdigit() for c in path.iterdir())


def _is_model_dir(path: Path) -> bool:
    return not path.name.startswith(("_", ".")) and (
        (path / CONFIG_FILE).is_file() or _has_versions(path)
    )


def _model_for_dir(model_dir: Path) -> ModelFacts:
    """The version ``config.toml`` pins, else the newest."""
    config_path = model_dir / CONFIG_FILE
    versions = {
        int(c.name): c / MODEL_FILE
        for c in model_dir.iterdir()
        if c.is_dir() and c.name.isdigit() and (c / MODEL_FILE).is_file()
    }
    table = _read_config(config_path) if config_path.is_file() else None
    if not versions:
        raise ModelError(f"{model_dir}: no version folder with {MODEL_FILE} (e.g. 1/{MODEL_FILE})")
    wanted = _version(table, str(config_path)) if table else None
    wanted = wanted or max(versions)
    if wanted not in versions:
        raise ModelError(
            f"{config_path}: version = {wanted}, but only versions {sorted(versions)} exist"
        )
    onnx_path = versions[wanted]
    if table is None:
        return _facts(_read_metadata(onnx_path), model_dir.name, onnx_path, wanted)
    return _facts(table, model_dir.name, onnx_path, wanted, source=str(config_path))


def _model_for_onnx(path: Path) -> ModelFacts:
    config_path = path.parent.parent / CONFIG_FILE
    if path.name == MODEL_FILE and path.parent.name.isdigit() and config_path.is_file():
        # The version folder named is built, whichever version the config pins.
        table = _read_config(config_path)
        return _facts(table, path.parent.parent.name, path, int(path.parent.name), str(config_path))
    table = _read_metadata(path)
    source = f"{path} metadata '{METADATA_KEY}'"
    return _facts(table, path.stem, path, _version(table, source) or 1, source)


def _read_config(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise ModelError(f"{path}: not valid TOML: {exc}") from None


def _read_metadata(onnx_path: Path) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:
        raise ModelError(
            f"{onnx_path}: no {CONFIG_FILE} beside its version folder, and reading the config "
            "from its ONNX metadata needs onnx: pip install 'edge[fp16]'"
        ) from None
    try:
        model = onnx.load(str(onnx_path), load_external_data=False)
    except Exception as exc:  # DecodeError, OSError: not an ONNX file
        raise ModelError(f"{onnx_path}: cannot be loaded as ONNX: {exc}") from None
    text = next((p.value for p in model.metadata_props if p.key == METADATA_KEY), None)
    if text is None:
        raise ModelError(
            f"{onnx_path}: no {CONFIG_FILE} beside its version folder and no '{METADATA_KEY}' "
            "entry in its ONNX metadata; write a config.toml (see docs/models.md)"
        )
    try:
        table = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{onnx_path}: metadata '{METADATA_KEY}' is not JSON: {exc}") from None
    if not isinstance(table, dict):
        raise ModelError(f"{onnx_path}: metadata '{METADATA_KEY}' is not a JSON object")
    return table


def _version(table: dict[str, Any], source: str) -> int | None:
    version = table.get("version")
    if version is not None and (type(version) is not int or version < 1):
        raise ModelError(f"{source}: version = {version!r}; give a version folder's number")
    return version


def _facts(
    table: dict[str, Any], default_name: str, onnx_path: Path, version: int, source: str = ""
) -> ModelFacts:
    source = source or f"{onnx_path} metadata '{METADATA_KEY}'"
    spec = {"name": default_name, **table}
    name, role = spec["name"], spec.get("role")
    if not isinstance(name, str) or not name:
        raise ModelError(f"{source}: name = {name!r}; give the model's name")
    if not isinstance(role, str) or not role:
        raise ModelError(f"{source}: role is missing; give role = 'classifier' or 'segmenter'")
    config = onnx_path.parent.parent / CONFIG_FILE
    return ModelFacts(
        name=name,
        version=version,
        role=role,
        onnx_path=onnx_path,
        sha256=file_sha256(onnx_path),
        spec=spec,
        config=config if config.is_file() else None,
    )
