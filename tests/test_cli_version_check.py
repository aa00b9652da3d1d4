"""`edge --version`, the version where an operator reads it, one line per thing in the logs, and
`edge run --check`: run the way a user types them (issue 19, items 5, 8 and 9)."""

from __future__ import annotations

import io
import json
import logging
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

import pytest
import structlog
from typer.testing import CliRunner

from edge import __version__
from edge.cli.main import app
from edge.logs import configure
from tests.conftest import free_port

EDGE = [sys.executable, "-m", "edge.cli.main"]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


@pytest.fixture(autouse=True)
def _logging_as_it_was() -> Iterator[None]:
    """Commands run in this process configure logging (at warning): later tests get it back."""
    yield
    structlog.reset_defaults()
    root = logging.getLogger()
    for handler in [h for h in root.handlers if type(h).__module__ == "edge.logs"]:
        root.removeHandler(handler)


def edge(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*EDGE, *args], capture_output=True, text=True, env=ENV, timeout=timeout, check=False
    )


# -- the version ----------------------------------------------------------------------------


def test_version_flag_prints_the_version_and_exits_zero() -> None:
    result = edge("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == __version__
    # The command stays, and says the same.
    assert edge("version").stdout.strip() == __version__


def test_doctor_prints_the_version(tiny_repo: Path) -> None:
    result = CliRunner().invoke(app, ["doctor", "--models", str(tiny_repo)])
    assert result.exit_code == 0, result.output
    assert f"edge {__version__}," in result.output.splitlines()[0]


def _read_lines(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def _until(lines: queue.Queue[str | None], seen: list[dict], event: str) -> dict:
    deadline = time.monotonic() + 60
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, f"the daemon exited before {event!r}: {seen}"
        record = json.loads(line)  # every line on stderr is one JSON object
        seen.append(record)
        if record["event"] == event:
            return record


def test_daemon_ready_carries_the_version_and_backend_chosen_is_once_per_model(
    tiny_repo: Path,
) -> None:
    daemon = subprocess.Popen(
        [*EDGE, "run",
         "--bind-source", f"tcp://127.0.0.1:{free_port()}",
         "--publish", f"tcp://127.0.0.1:{free_port()}",
         "--models", str(tiny_repo), "--workers", "2", "--threads", "1",
         "--log-format", "json"],
        stderr=subprocess.PIPE,
        text=True,
        env=ENV,
    )  # fmt: skip
    lines: queue.Queue[str | None] = queue.Queue()
    assert daemon.stderr is not None
    reader = threading.Thread(target=_read_lines, args=(daemon.stderr, lines), daemon=True)
    reader.start()
    start: list[dict] = []
    reload: list[dict] = []
    try:
        ready = _until(lines, start, "daemon ready")
        daemon.send_signal(signal.SIGHUP)
        _until(lines, reload, "reloaded")
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(60) == 0
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    reader.join(10)
    assert ready["version"] == __version__
    assert ready["workers"] == 2
    for seen in (start, reload):  # at start, and again at each reload
        chosen = [r for r in seen if r["event"] == "backend chosen"]
        assert sorted(r["model"].split(":")[0] for r in chosen) == ["classifier", "segmenter"]
        assert all(r["copies"] == 2 and r["backend"] == "onnxruntime" for r in chosen)


# -- third-party libraries' log lines -------------------------------------------------------


@pytest.fixture
def stderr(monkeypatch: pytest.MonkeyPatch) -> Callable[[], io.StringIO]:
    """Call it in the test body: pytest's capture swaps sys.stderr back between setup and call."""

    def swap() -> io.StringIO:
        stream = io.StringIO()
        monkeypatch.setattr(sys, "stderr", stream)
        return stream

    return swap


def test_stdlib_records_render_as_one_json_line_each(stderr: Callable[[], io.StringIO]) -> None:
    stream = stderr()
    configure("json", "info")
    structlog.get_logger("edge.test").info("ours")
    logging.getLogger("asyncua").warning("endpoint %s is slow", "opc.tcp://x:4840")
    logging.getLogger("asyncua.server").info("client connected")  # below WARNING: not shown
    logging.getLogger("pymodbus").error("bad frame")
    configure("json", "info")  # configuring again does not double the lines
    logging.getLogger("asyncua").warning("once")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(r["event"], r["level"]) for r in records] == [
        ("ours", "info"),
        ("endpoint opc.tcp://x:4840 is slow", "warning"),
        ("bad frame", "error"),
        ("once", "warning"),
    ]
    assert records[1]["logger"] == "asyncua" and records[2]["logger"] == "pymodbus"
    assert all("timestamp" in r for r in records)


def test_stdlib_exceptions_stay_inside_their_json_line(stderr: Callable[[], io.StringIO]) -> None:
    stream = stderr()
    configure("json")
    try:
        raise RuntimeError("socket went away")
    except RuntimeError:
        logging.getLogger("asyncua").exception("session failed")
    (line,) = stream.getvalue().splitlines()
    record = json.loads(line)
    assert record["event"] == "session failed" and record["level"] == "error"
    assert "RuntimeError: socket went away" in record["exception"]


# -- edge bench's summary -------------------------------------------------------------------


def test_bench_prints_its_summary_once(tiny_repo: Path, tmp_path: Path) -> None:
    args = ["bench", "--mode", "backend", "--models", str(tiny_repo), "--duration", "0.5"]
    args += ["--pool", "2", "--batch", "2"]
    out = tmp_path / "bench.json"
    with_file = CliRunner().invoke(app, [*args, "--json", str(out)])
    assert with_file.exit_code == 0, with_file.output
    assert with_file.stderr.strip().splitlines()[-1] == f"wrote {out}"
    assert '{"ratios"' not in with_file.stdout  # it is in the file and in the table
    assert json.loads(out.read_text())["ratios"]
    without = CliRunner().invoke(app, args)
    assert without.exit_code == 0, without.output
    # No file: the ratios as one JSON line, the last, for a script.
    last = json.loads(without.stdout.strip().splitlines()[-1])
    assert set(last) == {"ratios"}


# -- edge run --check -----------------------------------------------------------------------


def _lines(result: subprocess.CompletedProcess[str]) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in result.stdout.splitlines())


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_check_of_a_good_config_passes_and_binds_nothing(tiny_repo: Path, tmp_path: Path) -> None:
    ports = [free_port() for _ in range(3)]
    state = tmp_path / "var" / "state"
    config = tmp_path / "edge.toml"
    config.write_text(
        f'bind_sources = ["tcp://127.0.0.1:{ports[0]}"]\n'
        f'publish = "tcp://127.0.0.1:{ports[1]}"\n'
        f'metrics = "127.0.0.1:{ports[2]}"\n'
        f'state_dir = "{state}"\n'
        f'pid_file = "{tmp_path / "edge.pid"}"\n'
    )
    result = edge("run", "--config", str(config), "--models", str(tiny_repo), "--check")
    assert result.returncode == 0, result.stdout + result.stderr
    checks = _lines(result)
    for name in ("config", "endpoints", "metrics", "curve", "state_dir", "engines", "models"):
        assert checks[name].startswith("OK"), (name, checks)
    assert checks["result"].startswith("OK")
    assert "self-tested on onnxruntime" in checks["models"]
    assert all(_bindable(port) for port in ports), "a port was left bound"
    assert not state.exists() and not (tmp_path / "edge.pid").exists(), "the check wrote files"


def test_check_starts_no_thread(tiny_repo: Path, tmp_path: Path) -> None:
    before = set(threading.enumerate())
    result = CliRunner().invoke(
        app,
        ["run", "--check", "--bind-source", "tcp://127.0.0.1:*", "--models", str(tiny_repo),
         "--state-dir", str(tmp_path), "--log-format", "json"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert set(threading.enumerate()) == before


def test_check_names_a_broken_model(tiny_repo: Path, tmp_path: Path) -> None:
    repo = Path(shutil.copytree(tiny_repo, tmp_path / "models"))
    (onnx,) = (repo / "segmenter").glob("*/model.onnx")
    onnx.write_bytes(b"not an onnx model")
    result = edge("run", "--check", "--source", "tcp://127.0.0.1:1", "--models", str(repo))
    assert result.returncode == 1
    checks = _lines(result)
    assert checks["models"].startswith("FAIL") and "segmenter" in checks["models"]
    assert checks["result"] == "FAIL: models"
    assert checks["state_dir"].startswith("OK")


def test_check_names_a_state_dir_it_cannot_write(tiny_repo: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where a folder should be: unwritable, even for root
    result = edge("run", "--check", "--source", "tcp://127.0.0.1:1",
                  "--models", str(tiny_repo), "--state-dir", str(blocker / "state"))  # fmt: skip
    assert result.returncode == 1
    checks = _lines(result)
    assert checks["state_dir"].startswith("FAIL") and str(blocker) in checks["state_dir"]
    assert checks["result"] == "FAIL: state_dir"
    assert checks["models"].startswith("OK")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes in a read-only folder")
def test_check_names_a_read_only_state_dir(tiny_repo: Path, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o500)
    try:
        result = edge("run", "--check", "--source", "tcp://127.0.0.1:1",
                      "--models", str(tiny_repo), "--state-dir", str(state))  # fmt: skip
    finally:
        state.chmod(0o700)
    assert result.returncode == 1
    assert _lines(result)["state_dir"].startswith("FAIL")


def test_check_of_a_bad_config_names_it(tmp_path: Path) -> None:
    result = edge("run", "--check", "--source", "tcp://127.0.0.1:1", "--max-batch", "0")
    assert result.returncode == 1
    checks = _lines(result)
    assert checks["config"].startswith("FAIL") and "max_batch" in checks["config"]
    assert checks["result"] == "FAIL: config"
