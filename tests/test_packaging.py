"""pyproject.toml: every dependency is bounded, and the eval report needs no torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
GROUPS = {"dependencies": PROJECT["dependencies"], **PROJECT["optional-dependencies"]}


def _has_upper_bound(req: Requirement) -> bool:
    """An exact pin, a compatible-release clause or a ``<`` clause bounds the major."""
    for spec in req.specifier:
        if spec.operator in ("==", "===", "~="):
            return True
        if spec.operator in ("<", "<="):
            floors = [Version(s.version) for s in req.specifier if s.operator in (">=", ">")]
            upper = Version(spec.version)
            # A bound at or below the floor's major would refuse everything: a typo.
            return all(upper > floor for floor in floors)
    return False


@pytest.mark.parametrize(
    ("group", "line"), [(g, line) for g, lines in GROUPS.items() for line in lines]
)
def test_every_dependency_has_an_upper_bound(group: str, line: str) -> None:
    req = Requirement(line)
    assert _has_upper_bound(req), (
        f"pyproject.toml [{group}] {line!r} has no upper bound on its major: a fresh install "
        "could pull a major CI never ran (give e.g. '>=X,<X+1')"
    )


def test_report_extra_is_matplotlib_alone_and_train_and_test_include_it() -> None:
    report = [Requirement(line) for line in GROUPS["report"]]
    assert [r.name for r in report] == ["matplotlib"]
    for group in ("train", "test"):
        lines = {str(Requirement(line)) for line in GROUPS[group]}
        assert {str(r) for r in report} <= lines, f"[{group}] lacks the report extra's {report}"
    assert not any(Requirement(line).name == "torch" for line in GROUPS["report"])


def test_the_same_package_is_bounded_alike_in_every_group() -> None:
    seen: dict[str, tuple[str, str]] = {}
    for group, lines in GROUPS.items():
        for line in lines:
            req = Requirement(line)
            if req.name in seen:
                assert seen[req.name][1] == str(req.specifier), (
                    f"{req.name}: [{seen[req.name][0]}] says {seen[req.name][1]!r}, "
                    f"[{group}] says {str(req.specifier)!r}"
                )
            seen[req.name] = (group, str(req.specifier))


# A fresh interpreter where torch cannot be imported, as after pip install '.[report]'.
NO_TORCH = textwrap.dedent(
    """
    import sys

    class NoTorch:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError(f"torch is not installed (test): {name}")
            return None

    sys.meta_path.insert(0, NoTorch())
    from edge.cli.main import app

    sys.argv = ["edge", "eval", "--synthetic", "1", "--report", sys.argv[1]]
    try:
        app()
    except SystemExit as exc:
        assert not exc.code, f"edge eval exited {exc.code}"
    torch = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
    assert not torch, torch
    assert "matplotlib" in sys.modules
    """
)


def test_eval_report_renders_without_torch(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    report = tmp_path / "report"
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH, str(report)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert (report / "report.json").is_file()
    assert (report / "roc.png").stat().st_size > 1000
    assert (report / "confusion.png").stat().st_size > 1000
    assert list(report.glob("overlay_*.png"))
