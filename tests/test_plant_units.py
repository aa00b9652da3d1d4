"""The plant subscribers' systemd units: shipped as rendered, accepted by systemd, their
ExecStart options real, and `edge install-service --plant`."""

from __future__ import annotations

import shlex
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from edge.cli.main import app
from edge.line.bridges.config import load_mqtt_config
from edge.tools.plant_units import EXAMPLE_MQTT_CONFIG, UNITS, render_plant_unit
from tests.test_service import _edge_executable, directives

REPO = Path(__file__).resolve().parents[1]


def test_shipped_units_and_mqtt_config_are_the_rendered_defaults() -> None:
    for name in UNITS:
        assert (REPO / f"systemd/{name}.service").read_text() == render_plant_unit(name), name
    assert (REPO / "systemd/mqtt.toml").read_text() == EXAMPLE_MQTT_CONFIG


@pytest.mark.parametrize("name", list(UNITS))
def test_each_unit_runs_a_real_command_with_real_options(name: str) -> None:
    d = directives(render_plant_unit(name))
    assert d["Restart"] == ["on-failure"] and d["User"] == ["edge"]
    assert "edge.service" in d["After"][0] and "Requires" not in d  # reconnects on its own
    argv = shlex.split(d["ExecStart"][0])[1:]
    command = typer.main.get_command(app)
    while hasattr(command, "commands") and argv and argv[0] in command.commands:
        command = command.commands[argv.pop(0)]
    assert not hasattr(command, "commands"), f"{name}: {d['ExecStart']} names no command"
    known = {opt for param in command.params for opt in param.opts}
    given = [arg for arg in argv if arg.startswith("--")]
    assert given and set(given) <= known, f"{name}: unknown options {set(given) - known}"


def test_the_example_mqtt_config_loads_as_it_stands(tmp_path: Path) -> None:
    path = tmp_path / "mqtt.toml"
    path.write_text(EXAMPLE_MQTT_CONFIG)
    cfg = load_mqtt_config(path)
    assert (cfg.broker, cfg.qos, cfg.buffer) == ("mqtt://127.0.0.1:1883", 1, 10_000)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
@pytest.mark.parametrize("name", list(UNITS))
def test_systemd_analyze_verify_accepts_each_unit(name: str, tmp_path: Path) -> None:
    unit = tmp_path / f"{name}.service"
    unit.write_text(render_plant_unit(name, exec_start=_edge_executable()))
    run = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    complaints = [line for line in (run.stdout + run.stderr).splitlines() if unit.name in line]
    assert run.returncode == 0 and not complaints, run.stdout + run.stderr


def test_install_service_plant_writes_the_units_and_keeps_an_existing_mqtt_config(
    tmp_path: Path,
) -> None:
    args = ["install-service", "--root", str(tmp_path), "--exec-start", "/usr/bin/edge", "--plant"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in UNITS:
        unit = (tmp_path / f"etc/systemd/system/{name}.service").read_text()
        assert directives(unit)["ExecStart"][0].startswith("/usr/bin/edge ")
    config = tmp_path / "etc/edge/mqtt.toml"
    assert config.read_text() == EXAMPLE_MQTT_CONFIG
    assert stat.S_IMODE(config.stat().st_mode) == 0o640  # it may hold the broker's password
    assert "systemctl daemon-reload && systemctl enable --now edge edge-store" in result.output
    config.write_text("# the plant's own\n")
    result = CliRunner().invoke(app, args)
    assert f"kept existing {config}" in result.output
    assert config.read_text() == "# the plant's own\n"
    # Without --plant, only the daemon's unit.
    other = tmp_path / "other"
    CliRunner().invoke(app, ["install-service", "--root", str(other)])
    assert not (other / "etc/systemd/system/edge-store.service").exists()
