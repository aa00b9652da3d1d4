"""The systemd unit: what it promises, that systemd itself accepts it, and `edge install-service`."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge.cli.main import app
from edge.daemon.config import load_config
from edge.tools.service import EXAMPLE_CONFIG, render_unit

REPO = Path(__file__).resolve().parents[1]


def directives(unit: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for line in unit.splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            found.setdefault(key, []).append(value)
    return found


def test_shipped_unit_and_config_are_the_rendered_defaults() -> None:
    assert (REPO / "systemd/edge.service").read_text() == render_unit()
    assert (REPO / "systemd/edge.toml").read_text() == EXAMPLE_CONFIG


def test_unit_promises() -> None:
    d = directives(render_unit())
    for key, value in {
        "Type": "notify",
        "Restart": "on-failure",
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "User": "edge",
        "ReadWritePaths": "/run/edge",
        "DevicePolicy": "closed",
    }.items():
        assert d[key] == [value], key
    assert int(d["WatchdogSec"][0]) > 0
    assert d["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert any("nvidia" in v for v in d["DeviceAllow"])


def test_example_config_is_valid(tmp_path: Path) -> None:
    # The example is what a plant starts from: it must load as it stands.
    path = tmp_path / "edge.toml"
    path.write_text(EXAMPLE_CONFIG)
    cfg = load_config(path)
    assert cfg.metrics_address == ("127.0.0.1", 9108)
    assert cfg.publish.startswith("tcp://127.0.0.1:")


def _edge_executable() -> str:
    found = Path(sys.executable).parent / "edge"
    if found.is_file():
        return str(found)
    which = shutil.which("edge")
    if which is None:
        pytest.skip("no installed `edge` executable for ExecStart")
    return which


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path) -> None:
    unit = tmp_path / "edge.service"
    unit.write_text(render_unit(exec_start=_edge_executable()))
    run = subprocess.run(
        ["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60
    )
    # verify exits 0 on mere warnings (an unparsable value is "ignored"): none may name the unit.
    complaints = [line for line in (run.stdout + run.stderr).splitlines() if "edge.service" in line]
    assert run.returncode == 0 and not complaints, run.stdout + run.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_can_fail(tmp_path: Path) -> None:
    # The check above is only worth something if verify notices a broken unit.
    unit = tmp_path / "edge.service"
    unit.write_text(render_unit(exec_start=str(tmp_path / "no-such-edge")))
    run = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert run.returncode != 0


def test_install_service_writes_unit_and_keeps_an_existing_config(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["install-service", "--root", str(tmp_path), "--exec-start", "/usr/bin/edge"]
    )
    assert result.exit_code == 0, result.output
    unit = tmp_path / "etc/systemd/system/edge.service"
    config = tmp_path / "etc/edge/edge.toml"
    assert directives(unit.read_text())["ExecStart"] == [
        "/usr/bin/edge run --config /etc/edge/edge.toml"
    ]
    assert config.read_text() == EXAMPLE_CONFIG
    config.write_text("# the plant's own\n")
    result = runner.invoke(app, ["install-service", "--root", str(tmp_path)])
    assert "kept existing" in result.output
    assert config.read_text() == "# the plant's own\n"
    runner.invoke(app, ["install-service", "--root", str(tmp_path), "--force"])
    assert config.read_text() == EXAMPLE_CONFIG


@pytest.mark.parametrize("command", ["install-service", "reload", "keygen"])
def test_operations_commands_explain_themselves(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], prog_name="edge")
    assert result.exit_code == 0
    assert "Usage: edge " + command in result.output


def test_readme_lists_the_operations_commands() -> None:
    readme = (REPO / "README.md").read_text()
    for command in ("edge install-service", "edge reload", "edge keygen", "--metrics"):
        assert command in readme, command
