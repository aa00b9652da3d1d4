"""TensorRT engines on disk, edge's side: finding the engine for a model, the check that decides
whether it may be loaded here, and building it for an edge model (``--rebuild-stale``).

The engine folder's layout, the sidecar beside each plan and the atomic writes belong to the
build step that writes them (build_engine.sidecar; the machine facts: build_engine.machine);
build_engine imports nothing of edge, so the facts it needs about a model come from
``model_facts``.

An engine runs only on the GPU model and TensorRT version it was built with, and only means
something for the exact ONNX it came from, so the sidecar records all three and nothing loads
unless they match (``check``). Nothing here imports tensorrt: the cache logic runs, and is
tested, on machines without a GPU, with the GPU facts injected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from build_engine.machine import INSTALL_HINT as INSTALL_HINT  # re-exported for edge
from build_engine.machine import EnvFacts
from build_engine.machine import detect_facts as detect_facts  # re-exported for edge
from build_engine.models import ModelFacts
from build_engine.sidecar import (
    CONFIG_FILE,
    ENGINE_FILE,
    SIDECAR_FILE,
    SIDECAR_FORMAT,
    EngineFiles,
    Sidecar,
    engine_dir,
    file_sha256,
)
from edge.settings import format_validation_error
from edge.vision.backends.base import BackendError
from edge.vision.modelspec import ModelFiles, ModelSpec
from edge.vision.preprocess import graph_io


def model_facts(files: ModelFiles) -> ModelFacts:
    """What the build step needs to know about an edge model, from its validated config."""
    config = files.onnx_path.parent.parent / CONFIG_FILE
    return ModelFacts(
        name=files.spec.name,
        version=files.version,
        role=files.spec.role,
        onnx_path=files.onnx_path,
        sha256=files.sha256,
        spec=files.spec.model_dump(mode="json"),
        config=config if config.is_file() else None,
        graph=graph_io(files.spec).to_dict(),
    )


def sidecar_spec(sidecar: Sidecar) -> ModelSpec:
    """The ModelSpec a sidecar records (the model's config when the engine was built)."""
    return ModelSpec.model_validate(sidecar.spec)


@dataclass(frozen=True)
class Mismatch:
    field: str
    engine: str
    local: str

    def __str__(self) -> str:
        return f"{self.field}: the engine has {self.engine!r}, this machine has {self.local!r}"


class EngineError(BackendError):
    """An engine that cannot be used; the message names the file, the field and the fix."""


class MissingEngine(EngineError):
    pass


class StaleEngine(EngineError):
    def __init__(self, message: str, mismatches: list[Mismatch]) -> None:
        super().__init__(message)
        self.mismatches = mismatches


def read_sidecar(path: Path) -> Sidecar:
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise MissingEngine(
            f"{path} is missing: the engine beside it has no record of what it was built for"
        ) from None
    try:
        return Sidecar.from_json(text)
    except ValidationError as exc:
        raise EngineError(f"{path}: {format_validation_error(exc)}") from None
    except ValueError as exc:  # json.JSONDecodeError
        raise EngineError(f"{path} is not valid JSON: {exc}") from None


def check(
    sidecar: Sidecar,
    facts: EnvFacts,
    onnx_sha256: str,
    engine_sha256: str | None = None,
    graph: dict | None = None,
) -> list[Mismatch]:
    """Every field that stops this engine from being loaded here (empty: it may be loaded).

    ``graph``: the prologue and epilogue the model's config implies now; a fused engine must
    have been built with exactly these (an engine built unfused still runs, pre- and
    post-processed on the host).
    """

    def known(value: str | None) -> str:
        return "(unknown: " + "; ".join(facts.problems) + ")" if value is None else value

    found = []
    if sidecar.format != SIDECAR_FORMAT:
        found.append(Mismatch("format", str(sidecar.format), str(SIDECAR_FORMAT)))
    if sidecar.source_sha256 != onnx_sha256:
        found.append(Mismatch("source_sha256", sidecar.source_sha256, onnx_sha256))
    if engine_sha256 is not None and sidecar.engine_sha256 != engine_sha256:
        found.append(Mismatch("engine_sha256", sidecar.engine_sha256, engine_sha256))
    if graph is not None and sidecar.fused is not None and sidecar.fused != graph:
        changed = sorted(k for k in graph if sidecar.fused.get(k) != graph[k])
        found.append(Mismatch("fused", f"built with other {', '.join(changed)}", "its config"))
    if sidecar.tensorrt_version != facts.tensorrt_version:
        found.append(
            Mismatch("tensorrt_version", sidecar.tensorrt_version, known(facts.tensorrt_version))
        )
    if sidecar.gpu_name != facts.gpu_name:
        found.append(Mismatch("gpu_name", sidecar.gpu_name, known(facts.gpu_name)))
    if sidecar.compute_capability != facts.compute_capability:
        found.append(
            Mismatch(
                "compute_capability", sidecar.compute_capability, known(facts.compute_capability)
            )
        )
    return found


def rebuild_command(files: ModelFiles, root: Path) -> str:
    return f"edge build {files.onnx_path.parent.parent} --out {root}"


def locate(root: Path, files: ModelFiles, facts: EnvFacts) -> EngineFiles:
    """The engine for this model, checked against this machine, or an error saying why not."""
    folder = engine_dir(root, files.spec.name, files.version)
    plan = folder / ENGINE_FILE
    fix = f"build it with `{rebuild_command(files, root)}`, or run with --rebuild-stale"
    if not plan.is_file():
        raise MissingEngine(f"no TensorRT engine for model {files.model_id} at {plan}: {fix}")
    sidecar = read_sidecar(folder / SIDECAR_FILE)
    mismatches = check(
        sidecar, facts, files.sha256, file_sha256(plan), graph_io(files.spec).to_dict()
    )
    if mismatches:
        raise StaleEngine(
            f"TensorRT engine {plan} does not match model {files.model_id} on this machine, "
            f"so it is not loaded: {'; '.join(map(str, mismatches))}. Re-{fix}",
            mismatches,
        )
    return EngineFiles(plan, sidecar)


def ensure(
    root: Path,
    files: ModelFiles,
    facts: EnvFacts,
    *,
    rebuild_stale: bool,
    max_batch: int,
) -> EngineFiles:
    """``locate``, and with ``rebuild_stale`` build a missing or stale engine first."""
    try:
        return locate(root, files, facts)
    except EngineError:
        if not rebuild_stale:
            raise
    from build_engine.build import BuildOptions, build_model  # GPU-only path

    build_model(model_facts(files), root, BuildOptions(max_batch=max_batch), facts=facts)
    return locate(root, files, facts)


@dataclass(frozen=True)
class RepositoryEntry:
    name: str
    engine: EngineFiles | None
    problem: str | None  # why the folder holds no usable engine


def scan(root: Path) -> list[RepositoryEntry]:
    """Every engine folder under ``root`` (for `edge doctor`), without judging the machine."""
    entries = []
    if not root.is_dir():
        return entries
    for plan in sorted(root.glob(f"*/*/{ENGINE_FILE}")):
        name = plan.parent.parent.name
        try:
            entries.append(
                RepositoryEntry(
                    name, EngineFiles(plan, read_sidecar(plan.with_name(SIDECAR_FILE))), None
                )
            )
        except EngineError as err:
            entries.append(RepositoryEntry(name, None, str(err)))
    return entries
