"""One CLI: the same flag means the same thing in every command, defaults agree, errors look alike.

Commands are run as a user types them: `python -m edge.cli.main ...` in a folder of its own,
or through typer's CliRunner.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import subprocess
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import pytest
import typer
from typer.testing import CliRunner

from edge.cli.main import app
from edge.daemon.config import shipped_models
from edge.protocol import rle
from edge.tools.training.samples import synthetic_strips

BRIDGES = ("modbus", "opcua")
BRIDGE_NEEDS = {"modbus": "pymodbus", "opcua": "asyncua"}
CURVE_NEEDS_BOTH = "error: CURVE needs both --curve-server-key and --curve-client-key"


def flat(text: str) -> str:
    """Help or error output with Rich's box drawing and line wrapping taken out."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def invoke(*args: str) -> Any:
    return CliRunner().invoke(app, list(args), prog_name="edge")


def edge(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edge.cli.main", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def commands() -> Iterator[tuple[str, Any]]:
    """Every leaf command of the app, as ("bridge modbus", its click command)."""

    def walk(command: Any, path: list[str]) -> Iterator[tuple[str, Any]]:
        subs = getattr(command, "commands", None)
        if subs:
            for name, sub in subs.items():
                yield from walk(sub, [*path, name])
        else:
            yield " ".join(path), command

    yield from walk(typer.main.get_command(app), [])


def options(command: Any) -> list[Any]:
    return [p for p in command.params if p.param_type_name == "option"]


def option(command_path: str, long: str) -> Any:
    command = dict(commands())[command_path]
    found = [p for p in options(command) if long in p.opts]
    assert found, f"edge {command_path} has no {long}"
    return found[0]


# -- short flags --


def test_every_short_flag_means_one_option_across_all_commands() -> None:
    meanings: dict[str, set[str]] = defaultdict(set)
    where: dict[str, list[str]] = defaultdict(list)
    for path, command in commands():
        seen_here: set[str] = set()
        for param in options(command):
            names = param.opts + param.secondary_opts
            longs = sorted(n for n in names if n.startswith("--"))
            for short in (n for n in names if not n.startswith("--")):
                assert short not in seen_here, f"edge {path}: {short} twice"
                seen_here.add(short)
                meanings[short].add(longs[0] if longs else "(no long name)")
                where[short].append(path)
    assert meanings, "no short flags found: the walk over the app is broken"
    clashes = {s: sorted(m) for s, m in meanings.items() if len(m) > 1}
    assert clashes == {}, {s: (clashes[s], where[s]) for s in clashes}


def test_dash_c_is_the_config_file_everywhere_and_the_bridges_camera_has_none() -> None:
    for path in ("run", *(f"bridge {b}" for b in BRIDGES), "bridge mqtt"):
        assert "-c" in option(path, "--config").opts, path
    for bridge in BRIDGES:
        camera = option(f"bridge {bridge}", "--camera")
        assert all(o.startswith("--") for o in camera.opts + camera.secondary_opts), camera.opts


@pytest.mark.parametrize("bridge", BRIDGES)
def test_bridge_dash_c_reads_the_config_file(bridge: str, tmp_path: Path) -> None:
    pytest.importorskip(BRIDGE_NEEDS[bridge])
    config = tmp_path / "bridge.toml"
    # A bad value in the file: the error names the file, so -c was taken as the config.
    config.write_text('listen = "5020"\n' if bridge == "modbus" else 'endpoint = "http://x"\n')
    result = invoke("bridge", bridge, "-c", str(config))
    assert result.exit_code == 2, result.output
    assert f"error: {config}: " in flat(result.output)


# -- CURVE options and errors of the clients --

# The plant's subscribers: no config file, the same CURVE options and errors.
PLANT_CLIENTS = ("bridge mqtt", "store", "view")
CURVE_CLIENTS = ("listen", "camera", "replay", *(f"bridge {b}" for b in BRIDGES), *PLANT_CLIENTS)


@pytest.mark.parametrize("long", ["--curve-server-key", "--curve-client-key"])
def test_every_client_has_the_same_curve_options(long: str) -> None:
    reference = option("listen", long)
    for path in CURVE_CLIENTS:
        mine = option(path, long)
        assert (mine.opts, mine.secondary_opts, mine.help) == (
            reference.opts,
            reference.secondary_opts,
            reference.help,
        ), path
        assert mine.type_descriptor.annotation is reference.type_descriptor.annotation, path
        assert mine.default is None, path


@pytest.mark.parametrize("client", PLANT_CLIENTS)
@pytest.mark.parametrize("given", ["--curve-server-key", "--curve-client-key"])
def test_one_curve_key_alone_is_the_same_error_for_the_plant_clients(
    client: str, given: str
) -> None:
    extra = ["--broker", "mqtt://127.0.0.1:1"] if client == "bridge mqtt" else []
    extra += ["--db", "sqlite:///:memory:"] if client == "store" else []
    result = invoke(*client.split(), *extra, given, "some.key")
    assert result.exit_code == 2, result.output
    assert CURVE_NEEDS_BOTH in flat(result.output)


@pytest.mark.parametrize("bridge", BRIDGES)
@pytest.mark.parametrize("given", ["--curve-server-key", "--curve-client-key"])
def test_one_curve_key_alone_is_the_same_error_as_for_edge_listen(bridge: str, given: str) -> None:
    pytest.importorskip(BRIDGE_NEEDS[bridge])
    listen = invoke("listen", given, "some.key")
    result = invoke("bridge", bridge, given, "some.key")
    assert listen.exit_code == result.exit_code == 2, result.output
    assert CURVE_NEEDS_BOTH in flat(listen.output)
    assert CURVE_NEEDS_BOTH in flat(result.output)


@pytest.mark.parametrize("bridge", BRIDGES)
def test_one_curve_key_in_a_bridge_file_names_both_keys_and_flags(
    bridge: str, tmp_path: Path
) -> None:
    pytest.importorskip(BRIDGE_NEEDS[bridge])
    config = tmp_path / "bridge.toml"
    config.write_text('curve_server_key = "server.key"\n')
    result = invoke("bridge", bridge, "--config", str(config))
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert f"error: {config}: " in text
    assert "curve_client_key" in text and "--curve-client-key" in text


@pytest.mark.parametrize("bridge", BRIDGES)
def test_bridge_without_its_extra_fails_like_every_command(
    bridge: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    missing = BRIDGE_NEEDS[bridge]
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a)
    )
    result = invoke("bridge", bridge)
    assert result.exit_code == 2
    assert f"error: {missing} is not installed: pip install 'edge[plc]'" in flat(result.output)


# -- eval and tune on the shipped models --


def _shipped_configs() -> dict[str, str]:
    return {
        str(p.relative_to(shipped_models())): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(shipped_models().glob("*/config.toml"))
    }


def _labelled_sample(root: Path, count: int = 3) -> tuple[Path, Path]:
    """A few generated strips as PNGs and a Severstal train.csv of their exact masks."""
    images = root / "images"
    images.mkdir(parents=True)
    rows = ["ImageId,ClassId,EncodedPixels"]
    for i, strip in enumerate(synthetic_strips(count, seed=11, clean_fraction=0.3)):
        name = f"strip{i}.png"
        cv2.imwrite(str(images / name), strip.image)
        rows += [
            f"{name},{k + 1},{rle.encode(strip.masks[k])}" for k in range(4) if strip.present[k]
        ]
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    return images, root / "train.csv"


@pytest.mark.parametrize("command", ["eval", "tune"])
def test_eval_and_tune_help_name_the_shipped_default(command: str) -> None:
    result = invoke(command, "--help")
    assert result.exit_code == 0, result.output
    assert "(default: the shipped reference models" in flat(result.output)


def test_eval_outside_the_repository_runs_on_the_shipped_models(tmp_path: Path) -> None:
    images, labels = _labelled_sample(tmp_path / "data")
    away = tmp_path / "elsewhere"  # no models/ folder here
    away.mkdir()
    done = edge("eval", "--data", str(images), "--labels", str(labels), cwd=away)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 images" in done.stdout
    assert "model repository" not in done.stderr
    # What can still go wrong is the data, and the error says so.
    done = edge("eval", "--data", str(images), "--labels", str(tmp_path / "no.csv"), cwd=away)
    assert done.returncode == 2
    assert "no.csv: no such labels file" in flat(done.stderr)
    assert "model repository" not in done.stderr


def test_tune_never_rewrites_the_shipped_models_unasked(tmp_path: Path) -> None:
    before = _shipped_configs()
    assert before, "the shipped models have no config.toml"
    result = invoke("tune", "--synthetic", "2")
    assert result.exit_code == 2
    text = flat(result.output)
    assert "shipped reference models" in text and "--out DIR" in text and "--dry-run" in text

    result = invoke("tune", "--synthetic", "2", "--out", str(shipped_models() / "tuned"))
    assert result.exit_code == 2 and "is inside --models" in flat(result.output)
    assert not (shipped_models() / "tuned").exists()

    result = invoke("tune", "--synthetic", "2", "--dry-run")
    assert result.exit_code == 0, result.output
    assert "class 1: gate" in result.output and "wrote" not in result.output

    out = tmp_path / "tuned"
    result = invoke("tune", "--synthetic", "2", "--out", str(out))
    assert result.exit_code == 0, result.output
    for role in ("classifier", "segmenter"):
        assert f"wrote {out / role / 'config.toml'}" in result.output
        assert "chosen by edge tune" in (out / role / "config.toml").read_text()
        assert list((out / role).glob("*/model.onnx"))
    assert not (out / "__init__.py").exists()
    assert _shipped_configs() == before

    # The copy serves; a second tune will not write over it.
    result = invoke("eval", "--models", str(out), "--synthetic", "1")
    assert result.exit_code == 0, result.output
    result = invoke("tune", "--synthetic", "2", "--out", str(out))
    assert result.exit_code == 2 and "is not an empty folder" in flat(result.output)
    assert _shipped_configs() == before
