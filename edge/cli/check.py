"""``edge run --check``: what the daemon would start with, checked without starting it.

Reads files and loads the models as startup does, but binds no socket and starts no thread.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import typer

from edge.daemon.config import Config


def check_config(cfg: Config, echo: Callable[[str], None] = typer.echo) -> int:
    """One line per check of what ``edge run`` would start with; 0 if all passed, else 1.

    Reads files and loads the models as startup does, but binds no socket and starts no thread.
    """
    checks: list[tuple[str, Callable[[Config], str]]] = [
        ("endpoints", _check_endpoints),
        ("metrics", _check_metrics),
        ("curve", _check_curve),
        ("state_dir", _check_state_dir),
        ("pid_file", _check_pid_file),
        ("engines", _check_engines),
        ("models", _check_models),
    ]
    failed: list[str] = []
    for name, run_check in checks:
        try:
            detail = run_check(cfg)
        except Exception as err:  # any reason at all is the check's answer
            failed.append(name)
            echo(f"{name}: FAIL {err or type(err).__name__}")
        else:
            echo(f"{name}: OK {detail}")
    if failed:
        echo(f"result: FAIL: {', '.join(failed)}")
        return 1
    echo(f"result: OK ({len(checks) + 1} checks)")
    return 0


def _check_endpoints(cfg: Config) -> str:
    from edge.protocol.endpoints import check_endpoint

    for endpoint in cfg.sources:
        check_endpoint(endpoint, bind=False)
    for endpoint in [*cfg.bind_sources, cfg.publish]:
        check_endpoint(endpoint, bind=True)
    parts = [f"publish {cfg.publish}"]
    if cfg.sources:
        parts.append("connect to " + ", ".join(cfg.sources))
    if cfg.bind_sources:
        parts.append("bind for cameras " + ", ".join(cfg.bind_sources))
    return "; ".join(parts) + " (syntax; nothing bound)"


def _check_metrics(cfg: Config) -> str:
    from edge.daemon.config import parse_host_port

    if cfg.metrics is None:
        return "off"
    host, port = parse_host_port(cfg.metrics)
    return f"{host}:{port} (syntax; nothing bound)"


def _check_curve(cfg: Config) -> str:
    import zmq.auth

    from edge.protocol.curve import load_keypair

    if cfg.curve_secret_key is None or cfg.curve_authorized_clients is None:
        return "off (no curve_secret_key): sockets are not encrypted"
    load_keypair(cfg.curve_secret_key)
    try:
        keys = zmq.auth.load_certificates(cfg.curve_authorized_clients)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"cannot read certificates in {cfg.curve_authorized_clients}: {err}"
        ) from None
    allowed = sum(1 for ok in keys.values() if ok)
    note = "" if allowed else " (none: every camera and subscriber will be refused)"
    return f"{cfg.curve_secret_key}, {allowed} authorized client(s){note}"


def _writable_dir(folder: Path) -> str:
    """``folder`` exists and takes a file, or can be created: a probe file says so, even for
    root (``os.access`` does not)."""
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ValueError(f"{folder} cannot be a folder: {existing} is not one")
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".edge-check-"):
            pass
    except OSError as err:
        raise ValueError(f"{folder}: cannot write in {existing}: {err.strerror or err}") from None
    if existing == folder:
        return f"{folder} (writable)"
    return f"{folder} (will be created in {existing}, writable)"


def _check_state_dir(cfg: Config) -> str:
    if cfg.state_dir is None:
        return "off: frames lost while the daemon is down are not reported as gaps"
    from edge.daemon import seqstate

    detail = _writable_dir(cfg.state_dir)
    state = seqstate.state_file(cfg.state_dir)
    if state.exists() and not os.access(state, os.R_OK):
        raise ValueError(f"cannot read the camera state {state}")
    return detail


def _check_pid_file(cfg: Config) -> str:
    if cfg.pid_file is None:
        return "off"
    if cfg.pid_file.is_dir():
        raise ValueError(f"{cfg.pid_file} is a folder")
    return _writable_dir(cfg.pid_file.parent).replace(
        str(cfg.pid_file.parent), str(cfg.pid_file), 1
    )


def _uses_tensorrt(cfg: Config) -> bool:
    from edge.vision.backends import auto

    return auto.choose(cfg.backend, engines=cfg.engines).backend == "tensorrt"


def _check_engines(cfg: Config) -> str:
    if not _uses_tensorrt(cfg):
        return f"not used (backend {cfg.backend} runs on onnxruntime)"
    from edge.vision.backends.engines import EngineError, detect_facts, locate
    from edge.vision.modelspec import load_repository

    if cfg.engines is None:
        raise ValueError("the TensorRT backend needs an engine folder (--engines)")
    facts = detect_facts()
    found, stale = [], []
    for files in load_repository(cfg.models).values():
        try:
            found.append(str(locate(cfg.engines, files, facts).plan))
        except EngineError as err:
            if not cfg.rebuild_stale:
                raise
            stale.append(f"{files.model_id} ({err})")
    if stale:
        return f"{', '.join(found) or 'none usable'}; built at start (rebuild_stale): " + "; ".join(
            stale
        )
    return ", ".join(found)


def _check_models(cfg: Config) -> str:
    from edge.daemon.models import load_models, worker_plan

    plan = worker_plan(cfg)
    # One copy is the test: the daemon loads the same one per worker. Never builds an engine.
    replicas = load_models(cfg.model_copy(update={"rebuild_stale": False}), workers=1)
    try:
        models = ", ".join(replicas.model_ids.values())
        backend = replicas.backend_name
    finally:
        replicas.close()
    return (
        f"{models} from {cfg.models}, loaded and self-tested on {backend} "
        f"(the daemon loads {plan.workers} cop{'y' if plan.workers == 1 else 'ies'})"
    )
