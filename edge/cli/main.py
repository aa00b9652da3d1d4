"""The ``edge`` command line: the daemon and the tools around it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from edge import __version__
from edge.cli.common import Sources, bind_endpoints, fail
from edge.logs import configure

if TYPE_CHECKING:
    pass

app = typer.Typer(
    help="Streaming edge inference for steel-strip surface inspection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            callback=_print_version,
            is_eager=True,
            help="Print the version and exit (as `edge version`).",
        ),
    ] = False,
) -> None:
    """Streaming edge inference for steel-strip surface inspection."""


@app.command()
def run(
    source: Sources = None,
    bind_source: Annotated[
        list[str] | None,
        typer.Option(
            help="Endpoint to BIND for cameras that connect to the daemon; repeatable.",
            callback=bind_endpoints,
        ),
    ] = None,
    publish: Annotated[
        str | None,
        typer.Option(
            help="Endpoint the daemon BINDs to publish events. (default: tcp://127.0.0.1:5556)",
            callback=bind_endpoints,
        ),
    ] = None,
    models: Annotated[
        Path | None,
        typer.Option(help="Model repository folder. (default: the shipped reference models)"),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="TOML configuration file; flags override it."),
    ] = None,
    backend: Annotated[
        str | None,
        typer.Option(help="onnxruntime | openvino | tensorrt | auto (default: onnxruntime)"),
    ] = None,
    openvino_device: Annotated[
        str | None, typer.Option(help="OpenVINO's device: CPU, GPU, GPU.1, NPU. (default: CPU)")
    ] = None,
    openvino_precision: Annotated[
        str | None,
        typer.Option(
            help="OpenVINO's inference precision: f32 | bf16 | f16 | auto (the device's "
            "default). (default: auto)"
        ),
    ] = None,
    check_images: Annotated[
        Path | None,
        typer.Option(
            help="Folder of recorded strips --backend auto checks OpenVINO on against FP32 "
            "ONNX Runtime; unset: synthetic strips."
        ),
    ] = None,
    engines: Annotated[
        Path | None, typer.Option(help="TensorRT engine folder, from `edge build`.")
    ] = None,
    rebuild_stale: Annotated[
        bool | None,
        typer.Option(
            "--rebuild-stale/--no-rebuild-stale",
            help="Rebuild a missing or stale engine instead of refusing. (default: refuse)",
        ),
    ] = None,
    max_batch: Annotated[
        int | None, typer.Option(help="Tiles per model batch. (default: 32)")
    ] = None,
    max_wait_ms: Annotated[
        float | None,
        typer.Option(help="How long a partial batch waits for more strips. (default: 5)"),
    ] = None,
    max_latency_ms: Annotated[
        float | None,
        typer.Option(
            help="Drop a strip (reason deadline) still waiting for inference this long after "
            "receipt; more than --max-wait-ms. (default: off)"
        ),
    ] = None,
    queue_size: Annotated[
        int | None,
        typer.Option(help="Strips waiting for inference before load is shed. (default: 16)"),
    ] = None,
    overload: Annotated[
        str | None, typer.Option(help="drop-oldest | block (default: drop-oldest)")
    ] = None,
    workers: Annotated[
        int | None,
        typer.Option(
            help="Inference workers, each with its own copy of the models; 0 = auto "
            "(CPU: one per core, up to 4; GPU: 1). (default: 0)"
        ),
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option(help="ONNX Runtime threads per worker; 0 = cores / workers. (default: 0)"),
    ] = None,
    daemon_id: Annotated[
        str | None, typer.Option(help="Name in status topics. (default: hostname)")
    ] = None,
    log_format: Annotated[
        str | None, typer.Option(help="auto | json | console (default: auto)")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug | info | warning | error (default: info)")
    ] = None,
    metrics: Annotated[
        str | None,
        typer.Option(help="HOST:PORT to serve /metrics, /healthz, /readyz on. (default: off)"),
    ] = None,
    pid_file: Annotated[
        Path | None, typer.Option(help="Write the pid here, for `edge reload`. (default: none)")
    ] = None,
    state_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep each camera's last seq here, so frames lost across a crash or restart "
            "are reported as a gap. (default: $STATE_DIRECTORY, set by systemd; else off)"
        ),
    ] = None,
    max_cameras: Annotated[
        int | None,
        typer.Option(
            help="Camera ids the daemon keeps counters for; more are refused. (default: 64)"
        ),
    ] = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Check the configuration, the models (loaded and self-tested), the engines, "
            "the addresses, the CURVE files and the state_dir, then exit: 0 if all passed. "
            "Binds nothing and starts nothing.",
        ),
    ] = False,
) -> None:
    """Run the inspection daemon: frames in from cameras, defect events out.

    Example: edge run --source tcp://cam1:5555 --source tcp://cam2:5555 --publish tcp://*:5556

    Before a deployment: edge run --config /etc/edge/edge.toml --check
    """
    from edge.daemon.config import ConfigError, load_config
    from edge.daemon.models import StartupError
    from edge.daemon.server import Server
    from edge.protocol.curve import SecurityError
    from edge.vision.backends.base import BackendError
    from edge.vision.modelspec import ModelConfigError

    overrides = dict(
        sources=source,
        bind_sources=bind_source,
        publish=publish,
        models=models,
        backend=backend,
        openvino_device=openvino_device,
        openvino_precision=openvino_precision,
        check_images=check_images,
        engines=engines,
        rebuild_stale=rebuild_stale,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        max_latency_ms=max_latency_ms,
        queue_size=queue_size,
        overload=overload,
        workers=workers,
        threads=threads,
        daemon_id=daemon_id,
        log_format=log_format,
        log_level=log_level,
        metrics=metrics,
        pid_file=pid_file,
        state_dir=state_dir,
        max_cameras=max_cameras,
    )
    try:
        cfg = load_config(config, **overrides)
    except ConfigError as err:
        if check:
            typer.echo(f"config: FAIL {err}")
            typer.echo("result: FAIL: config")
            raise typer.Exit(1) from None
        raise fail(str(err)) from None
    if check:
        # Only what goes wrong is logged: the check's own lines are on stdout.
        configure(cfg.log_format, "error" if cfg.log_level == "error" else "warning")
        typer.echo(f"config: OK {config if config is not None else 'no file'}, flags applied")
        from edge.cli.check import check_config

        raise typer.Exit(check_config(cfg))
    configure(cfg.log_format, cfg.log_level)
    # SIGHUP re-reads the same file with the same flags on top.
    server = Server(cfg, read_config=lambda: load_config(config, **overrides))
    try:
        code = server.run()
    except (ModelConfigError, BackendError, SecurityError) as err:
        raise fail(str(err), 1) from None
    except StartupError as err:  # names its step: a port in use, a bad address, a pid file
        raise fail(str(err), 1) from None
    raise typer.Exit(code)


@app.command()
def demo(
    duration: Annotated[float, typer.Option(help="Seconds to run (0: until Ctrl-C).")] = 15.0,
    cameras: Annotated[int, typer.Option(min=1, max=8, help="Simulated cameras.")] = 2,
    fps: Annotated[float, typer.Option(min=0.1, help="Strips per second per camera.")] = 5.0,
    defect_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of defective strips.")
    ] = 0.3,
    models: Annotated[
        Path | None, typer.Option(help="Model repository. (default: shipped)")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic strips.")] = 0,
) -> None:
    """A simulated line on this machine: synthetic cameras -> daemon -> listener, live summary.

    Needs nothing but this package: strips are generated, sockets are on loopback.
    """
    from edge.tools.demo import run_demo

    configure("console" if sys.stderr.isatty() else "json", "warning")
    raise typer.Exit(
        run_demo(
            duration=duration,
            cameras=cameras,
            fps=fps,
            defect_rate=defect_rate,
            models=models,
            seed=seed,
        )
    )


def version() -> None:
    """Print the version."""
    typer.echo(__version__)


def _register_commands() -> None:
    """The tools around the daemon, each in its own module; --help lists them in this order."""
    from edge.cli.bench import bench
    from edge.cli.bridge import bridge_app
    from edge.cli.evaluate import eval_command, tune_command
    from edge.cli.gpu import build, doctor
    from edge.cli.line import camera, listen, record, replay
    from edge.cli.ops import install_service, keygen, reload
    from edge.cli.plant import report_command, store_command
    from edge.cli.train import train
    from edge.cli.view import view

    for command in (camera, record, replay, listen, bench, build, doctor, reload, keygen):
        app.command()(command)
    app.command("install-service")(install_service)
    app.command()(train)
    app.command("eval")(eval_command)
    app.command("tune")(tune_command)
    app.add_typer(bridge_app, name="bridge")
    app.command("store")(store_command)
    app.command("report")(report_command)
    app.command()(view)
    app.command()(version)


_register_commands()

if __name__ == "__main__":
    app()
