from __future__ import annotations

from pathlib import Path

import pytest

from edge.daemon.config import ConfigError, load_config, shipped_models


def test_flags_override_the_file_and_relative_models_follow_the_file(
    tmp_path: Path, tiny_repo: Path
) -> None:
    (tmp_path / "models").symlink_to(tiny_repo)
    path = tmp_path / "edge.toml"
    path.write_text('sources = ["tcp://cam1:5555"]\nmodels = "models"\nmax_batch = 8\n')
    cfg = load_config(path, max_batch=16)
    assert cfg.max_batch == 16
    assert cfg.models == tmp_path / "models"
    assert cfg.sources == ["tcp://cam1:5555"]


def test_defaults_serve_the_shipped_models() -> None:
    cfg = load_config(None, sources=["tcp://127.0.0.1:5555"])
    assert cfg.models == shipped_models()
    assert cfg.backend == "onnxruntime" and cfg.overload == "drop-oldest"


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ('sources = ["tcp://a:1"]\nmax_batch = 0', "max_batch: Input should be greater than 0"),
        ('sources = ["tcp://a:1"]\nmax_bacth = 4', "max_bacth: Extra inputs are not permitted"),
        (
            'sources = ["tcp://a:1"]\noverload = "panic"',
            "overload: Input should be 'drop-oldest' or 'block'",
        ),
        ('sources = ["cam1:5555"]', "sources: 'cam1:5555' is not a ZeroMQ endpoint"),
        ('sources = ["tcp://a:1"]\nmodels = "nowhere"', "models: model repository"),
        ("publish = 'tcp://*:1'", "no cameras"),
        ("max_batch = ", "is not valid TOML"),
        (
            'sources = ["tcp://a:1"]\nmax_latency_ms = 0',
            "max_latency_ms: must be a number of ms more than 0 (leave it unset for no deadline)",
        ),
        ('sources = ["tcp://a:1"]\nmax_latency_ms = -5.0', "max_latency_ms: must be a number"),
        ('sources = ["tcp://a:1"]\nmax_latency_ms = inf', "max_latency_ms: must be a number"),
        (
            'sources = ["tcp://a:1"]\nmax_wait_ms = 20\nmax_latency_ms = 20',
            "max_latency_ms: 20.0 ms must be more than max_wait_ms (20.0 ms)",
        ),
    ],
)
def test_bad_values_name_the_file_key_and_reason(tmp_path: Path, toml: str, expected: str) -> None:
    path = tmp_path / "edge.toml"
    path.write_text(toml)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert str(path) in str(err.value)
    assert expected in str(err.value)


def test_missing_config_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "absent.toml")


def test_max_latency_is_off_by_default_and_set_by_file_or_flag(tmp_path: Path) -> None:
    assert load_config(None, sources=["tcp://a:1"]).max_latency_ms is None
    path = tmp_path / "edge.toml"
    path.write_text('sources = ["tcp://a:1"]\nmax_wait_ms = 2\nmax_latency_ms = 40\n')
    assert load_config(path).max_latency_ms == 40.0
    assert load_config(path, max_latency_ms=25.5).max_latency_ms == 25.5
