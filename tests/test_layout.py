"""The package's layout is its data path, and the imports keep to it."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_import_contracts_hold() -> None:
    lint = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    run = subprocess.run(
        [lint, "--config", str(REPO / "pyproject.toml"), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "broken" not in run.stdout.lower().replace("0 broken", "")


# What a bridge author has: msgpack and pyzmq. Everything the daemon and the models need is
# made unimportable in a fresh interpreter.
BLOCKED = ("numpy", "cv2", "onnxruntime", "structlog", "pydantic", "typer", "rich",
           "prometheus_client", "torch")  # fmt: skip

FRESH = textwrap.dedent(
    """
    import importlib.abc, sys

    class Blocked(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Blocked())
    import edge.protocol
    from edge.protocol import FrameHeader, encode_frame, parse_event, parse_frame_parts, pack
    from edge.protocol import curve, endpoints, sockets

    header = FrameHeader("cam1", 7, 0, "raw", (2, 3))
    parsed, payload = parse_frame_parts([bytes(p) for p in encode_frame(header, bytes(6))])
    assert parsed == header and payload.nbytes == 6
    topic, body = parse_event([b"event/cam1", pack(edge.protocol.gap_event("cam1", 1, 2))])
    assert body["missing"] == 2
    assert endpoints.check_endpoint("tcp://127.0.0.1:5556", bind=False)
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    assert not loaded, loaded
    print("protocol ok")
    """
)


def test_the_wire_protocol_imports_with_msgpack_and_pyzmq_alone() -> None:
    run = subprocess.run(
        [sys.executable, "-c", f"BLOCKED = {BLOCKED!r}\n{FRESH}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "protocol ok" in run.stdout


@pytest.mark.parametrize("limit", [400])
def test_no_module_is_past_the_size_that_wants_splitting(limit: int) -> None:
    # ~400 lines: a little slack for a module that is one job and reads best whole.
    too_long = {
        str(path.relative_to(REPO)): n
        for path in sorted((REPO / "edge").rglob("*.py"))
        if (n := len(path.read_text().splitlines())) > limit + 20
    }
    assert too_long == {}
