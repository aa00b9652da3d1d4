"""Settings from a TOML file with command-line flags on top, validated by pydantic.

Shared by the daemon's config and the bridges' (edge.daemon.config, edge.line.bridges.config):
one loader, one error type, one way of naming the bad key.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

ModelT = TypeVar("ModelT", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration that cannot run; the message names the key and the reason."""


def format_validation_error(exc: ValidationError) -> str:
    """One line per problem, each naming the dotted key: 'thresholds.gate: ...'."""
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{key}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)


def load_validated(
    model: type[ModelT], path: Path | None, path_keys: tuple[str, ...], overrides: dict[str, Any]
) -> ModelT:
    """A pydantic config from a TOML file (optional) with flags on top; errors name the key.

    Relative paths under ``path_keys`` in the file mean relative to the file.
    """
    data: dict[str, Any] = {}
    where = "command line"
    if path is not None:
        where = str(path)
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
        for key in path_keys:
            if isinstance(data.get(key), str):
                data[key] = str(path.parent / os.path.expanduser(data[key]))
    data.update({k: v for k, v in overrides.items() if v is not None and v != []})
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: {format_validation_error(exc)}") from None
