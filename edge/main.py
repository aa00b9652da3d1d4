"""The ``edge`` command line: the daemon and the tools around it."""

from __future__ import annotations

import itertools
import json
import sys
import threading
from pathlib import Path
from typing import Annotated

import typer

from edge import __version__
from edge.logs import configure

app = typer.Typer(
    help="Streaming edge inference for steel-strip surface inspection.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

Sources = Annotated[
    list[str] | None,
    typer.Option("--source", "-s", help="Endpoint to CONNECT to; repeat for several."),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


@app.command()
def run(
    source: Sources = None,
    bind_source: Annotated[
        list[str] | None,
        typer.Option(help="Endpoint to BIND for cameras that connect to the daemon; repeatable."),
    ] = None,
    publish: Annotated[
        str | None,
        typer.Option(
            help="Endpoint the daemon BINDs to publish events. (default: tcp://127.0.0.1:5556)"
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
        str | None, typer.Option(help="onnxruntime | tensorrt | auto (default: onnxruntime)")
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
    queue_size: Annotated[
        int | None,
        typer.Option(help="Strips waiting for inference before load is shed. (default: 16)"),
    ] = None,
    overload: Annotated[
        str | None, typer.Option(help="drop-oldest | block (default: drop-oldest)")
    ] = None,
    threads: Annotated[
        int | None, typer.Option(help="ONNX Runtime threads; 0 = all cores. (default: 0)")
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
) -> None:
    """Run the inspection daemon: frames in from cameras, defect events out.

    Example: edge run --source tcp://cam1:5555 --source tcp://cam2:5555 --publish tcp://*:5556
    """
    from zmq import ZMQError

    from edge.backends.base import BackendError
    from edge.config import ConfigError, load_config
    from edge.modelspec import ModelConfigError
    from edge.security import SecurityError
    from edge.server import Server

    overrides = dict(
        sources=source,
        bind_sources=bind_source,
        publish=publish,
        models=models,
        backend=backend,
        engines=engines,
        rebuild_stale=rebuild_stale,
        max_batch=max_batch,
        max_wait_ms=max_wait_ms,
        queue_size=queue_size,
        overload=overload,
        threads=threads,
        daemon_id=daemon_id,
        log_format=log_format,
        log_level=log_level,
        metrics=metrics,
        pid_file=pid_file,
    )
    try:
        cfg = load_config(config, **overrides)
    except ConfigError as err:
        raise fail(str(err)) from None
    configure(cfg.log_format, cfg.log_level)
    # SIGHUP re-reads the same file with the same flags on top.
    server = Server(cfg, read_config=lambda: load_config(config, **overrides))
    try:
        code = server.run()
    except (ModelConfigError, BackendError, SecurityError) as err:
        raise fail(str(err), 1) from None
    except (OSError, ZMQError) as err:  # a port in use, a bad address
        raise fail(f"cannot open sockets: {err}", 1) from None
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
    from edge.demo import run_demo

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


@app.command()
def camera(
    to: Annotated[str, typer.Option(help="Endpoint the camera BINDs, e.g. tcp://*:5555.")],
    images: Annotated[
        Path | None,
        typer.Option(help="Folder of strip images to send. (default: synthetic strips)"),
    ] = None,
    fps: Annotated[float, typer.Option(help="Frames per second (0: as fast as possible).")] = 20.0,
    loop: Annotated[bool, typer.Option(help="Start over at the end of the folder.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many frames.")] = None,
    camera_id: Annotated[
        str, typer.Option("--camera-id", help="Camera id in topics and headers.")
    ] = "cam1",
    encoding: Annotated[str, typer.Option(help="raw | jpeg | png")] = "raw",
    color: Annotated[bool, typer.Option(help="Send 3-channel RGB instead of grayscale.")] = False,
    defect_rate: Annotated[
        float, typer.Option(help="Synthetic strips only: share defective.")
    ] = 0.2,
    seed: Annotated[int, typer.Option(help="Synthetic strips only: seed.")] = 0,
    wait_subscriber: Annotated[
        float, typer.Option(help="Seconds to wait for a subscriber before sending.")
    ] = 10.0,
) -> None:
    """Publish strip images as a camera would (from a folder, or synthetic ones)."""
    from edge.camera import ImageLoadError, images_in, load_strip, run_camera
    from edge.protocol import ENCODINGS

    if encoding not in ENCODINGS:
        raise fail(f"--encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
    configure()
    if images is not None:
        try:
            paths = images_in(images)
        except ImageLoadError as err:
            raise fail(str(err)) from None
        ordered = itertools.cycle(paths) if loop else iter(paths)
        frames = (load_strip(p, gray=not color) for p in ordered)
    else:
        from edge.synthetic import strip_stream

        frames = (s.image for s in strip_stream(seed, defect_rate=defect_rate))
        if color:
            import numpy as np

            frames = (np.repeat(f[:, :, None], 3, axis=2) for f in frames)
    try:
        sent = run_camera(
            to,
            frames,
            camera=camera_id,
            fps=fps or None,
            encoding=encoding,
            count=count,
            wait_subscriber_s=wait_subscriber,
        )
    except ImageLoadError as err:  # images load lazily: a bad file shows up mid-run
        raise fail(str(err), 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(f"sent {sent} frames", err=True)


@app.command()
def record(
    out: Annotated[Path, typer.Option(help="Recording file to write (.edgerec).")],
    source: Sources = None,
    bind: Annotated[bool, typer.Option(help="BIND the sources instead of connecting.")] = False,
    frames: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Record camera messages exactly as received, for replay and tests."""
    from edge.recording import record as record_messages

    if not source:
        raise fail("give at least one --source")
    configure()
    stop = threading.Event()
    try:
        n = record_messages(source, out, frames=frames, duration_s=duration, bind=bind, stop=stop)
    except KeyboardInterrupt:
        stop.set()
        raise typer.Exit(130) from None
    typer.echo(f"recorded {n} messages to {out}", err=True)


@app.command()
def replay(
    recording: Annotated[Path, typer.Argument(help="A file written by `edge record`.")],
    to: Annotated[str, typer.Option(help="Endpoint to BIND and publish on, e.g. tcp://*:5555.")],
    fps: Annotated[
        float | None, typer.Option(help="Fixed rate instead of the recorded timing.")
    ] = None,
    as_fast_as_possible: Annotated[
        bool, typer.Option("--as-fast-as-possible", help="No pacing at all.")
    ] = False,
    wait_subscriber: Annotated[
        float, typer.Option(help="Seconds to wait for a subscriber before sending.")
    ] = 10.0,
    allow_truncated: Annotated[
        bool, typer.Option(help="Replay what a killed recorder left, up to its last whole message.")
    ] = False,
) -> None:
    """Publish a recording again, message for message."""
    from edge.camera import replay as replay_recording
    from edge.recording import RecordingError

    configure()
    try:
        n = replay_recording(
            recording,
            to,
            fps=fps,
            as_fast_as_possible=as_fast_as_possible,
            wait_subscriber_s=wait_subscriber,
            allow_truncated=allow_truncated,
        )
    except RecordingError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(f"replayed {n} messages", err=True)


@app.command()
def listen(
    source: Annotated[
        str, typer.Option("--source", "-s", help="The daemon's publish endpoint.")
    ] = "tcp://127.0.0.1:5556",
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    status: Annotated[bool, typer.Option(help="Also print the periodic status messages.")] = True,
    curve_server_key: Annotated[
        Path | None, typer.Option(help="CURVE: the daemon's public server.key.")
    ] = None,
    curve_client_key: Annotated[
        Path | None, typer.Option(help="CURVE: this subscriber's .key_secret (authorized).")
    ] = None,
) -> None:
    """Print the daemon's events, one line each."""
    from edge.listen import format_event, to_json_line
    from edge.listen import listen as listen_events
    from edge.security import SecurityError

    curve = None
    if curve_server_key is not None and curve_client_key is not None:
        curve = (curve_server_key, curve_client_key)
    elif curve_server_key is not None or curve_client_key is not None:
        raise fail("CURVE needs both --curve-server-key and --curve-client-key")

    def show(topic: str, body: dict) -> None:
        typer.echo(to_json_line(body) if json_lines else format_event(topic, body))

    try:
        listen_events(source, show, count=count, status=status, curve=curve)
    except SecurityError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None


@app.command()
def bench(
    backend: Annotated[str, typer.Option(help="onnxruntime | tensorrt | auto")] = "onnxruntime",
    models: Annotated[
        Path | None, typer.Option(help="Model repository. (default: the shipped reference models)")
    ] = None,
    engines: Annotated[
        Path | None, typer.Option(help="TensorRT engine folder, from `edge build`.")
    ] = None,
    batch: Annotated[
        str, typer.Option(help="Batch sizes for the backend mode, comma-separated.")
    ] = "1,8,32",
    defect_rate: Annotated[
        float, typer.Option(min=0.0, max=1.0, help="Share of defective synthetic strips.")
    ] = 0.2,
    mode: Annotated[
        str, typer.Option(help="backend | pipeline | naive | e2e | all, or a comma-separated list.")
    ] = "all",
    duration: Annotated[
        float, typer.Option(min=0.5, help="Seconds of measurement per mode (e2e: see docs).")
    ] = 20.0,
    memory_seconds: Annotated[
        float | None,
        typer.Option(
            min=1.0,
            help="Seconds at 2x saturation in e2e (default: --duration; 60 for the full check).",
        ),
    ] = None,
    images: Annotated[
        Path | None, typer.Option(help="Folder of real strip images instead of synthetic ones.")
    ] = None,
    pool: Annotated[int, typer.Option(min=1, help="Distinct strips, cycled.")] = 100,
    seed: Annotated[int, typer.Option(help="Seed of the synthetic strips.")] = 0,
    threads: Annotated[int, typer.Option(min=0, help="ONNX Runtime threads; 0 = all cores.")] = 0,
    max_batch: Annotated[
        int,
        typer.Option(
            min=0,
            help="The daemon's max_batch in pipeline and e2e; 0: the batch size the backend "
            "mode finds fastest (32 without it).",
        ),
    ] = 0,
    cameras: Annotated[int, typer.Option(min=1, max=8, help="Cameras in pipeline and e2e.")] = 2,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every figure and the machine to this file.")
    ] = None,
) -> None:
    """Measure throughput and latency: bare models, the cascade, the naive way, the real daemon.

    Example: edge bench --mode all --json bench.json
    """
    from edge.backends.base import BackendError
    from edge.bench import MODES, BenchSettings, run_bench, write_json
    from edge.bench.e2e import E2EError
    from edge.camera import ImageLoadError
    from edge.config import shipped_models
    from edge.modelspec import ModelConfigError

    if backend not in ("onnxruntime", "tensorrt", "auto"):
        raise fail(f"--backend must be onnxruntime, tensorrt or auto, got {backend!r}")
    try:
        batches = [int(b) for b in batch.split(",") if b.strip()]
    except ValueError:
        raise fail(f"--batch must be comma-separated integers, got {batch!r}") from None
    if not batches or min(batches) < 1:
        raise fail(f"--batch sizes must be >= 1, got {batch!r}")
    modes = list(MODES) if mode == "all" else [m.strip() for m in mode.split(",") if m.strip()]
    bad = [m for m in modes if m not in MODES]
    if bad or not modes:
        raise fail(
            f"--mode must be one of {[*MODES, 'all']} (or a comma-separated list), got {mode!r}"
        )
    repository = models or shipped_models()
    if not repository.is_dir():
        raise fail(f"model repository {str(repository)!r} is not a folder")
    configure("console" if sys.stderr.isatty() else "json", "warning")
    settings = BenchSettings(
        models=repository,
        modes=[m for m in MODES if m in modes],
        backend=backend,
        engines=engines,
        batches=batches,
        defect_rate=defect_rate,
        duration_s=duration,
        memory_s=memory_seconds,
        images=images,
        pool_size=pool,
        seed=seed,
        threads=threads,
        max_batch=max_batch,
        cameras=cameras,
    )
    try:
        report = run_bench(settings)
    except (ModelConfigError, BackendError, ImageLoadError) as err:
        raise fail(str(err), 1) from None
    except E2EError as err:
        raise fail(f"e2e: {err}", 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    if json_out is not None:
        write_json(report, json_out)
        typer.echo(f"wrote {json_out}", err=True)
    typer.echo(json.dumps({"ratios": report["ratios"]}))


@app.command()
def build(
    models: Annotated[
        list[Path],
        typer.Argument(help="Model repository, model folders, or their model.onnx files."),
    ],
    out: Annotated[Path, typer.Option(help="Engine folder to write.")] = Path("engines"),
    fp16: Annotated[bool, typer.Option("--fp16/--fp32", help="Engine precision.")] = True,
    max_batch: Annotated[int, typer.Option(min=1, help="Largest batch the engine runs.")] = 32,
    opt_batch: Annotated[
        int | None, typer.Option(min=1, help="Batch TensorRT tunes for. (default: max)")
    ] = None,
    workspace_mib: Annotated[int, typer.Option(min=16, help="Builder workspace (MiB).")] = 4096,
    timing_cache: Annotated[
        Path | None, typer.Option(help="Timing cache to reuse. (default: <out>/timing.cache)")
    ] = None,
) -> None:
    """Build FP16 TensorRT engines from ONNX models (same as `python -m build_engine`).

    Example: edge build models/ --out engines/ --max-batch 32
    """
    from build_engine.build import BuildOptions
    from build_engine.cli import run_build

    options = BuildOptions(
        fp16=fp16,
        max_batch=max_batch,
        opt_batch=opt_batch,
        workspace_mib=workspace_mib,
        timing_cache=timing_cache,
    )
    raise typer.Exit(run_build(models, out, options))


@app.command()
def doctor(
    models: Annotated[
        Path | None, typer.Option(help="Model repository. (default: the shipped reference models)")
    ] = None,
    engines: Annotated[
        Path | None, typer.Option(help="TensorRT engine folder to check against the models.")
    ] = None,
    batch: Annotated[int, typer.Option(min=1, max=64, help="Tiles in the test batch.")] = 4,
) -> None:
    """Check this machine: backends, GPU, versions, and each model/engine against ONNX Runtime."""
    from edge.config import shipped_models
    from edge.doctor import run_doctor

    configure("console" if sys.stderr.isatty() else "json", "warning")
    raise typer.Exit(run_doctor(models or shipped_models(), engines, batch=batch, echo=typer.echo))


@app.command()
def reload(
    pid_file: Annotated[
        Path, typer.Option(help="The pid file the daemon was started with (--pid-file).")
    ],
) -> None:
    """Make a running daemon reload its config and models (SIGHUP); it keeps serving.

    A bad new model or config is refused and logged by the daemon, which keeps the old ones.
    Under systemd, `systemctl reload edge` does the same.
    """
    from edge.reload import ReloadError, signal_reload

    try:
        pid = signal_reload(pid_file)
    except ReloadError as err:
        raise fail(str(err), 1) from None
    typer.echo(f"sent SIGHUP to edge daemon {pid}; its log says whether the reload succeeded")


@app.command()
def keygen(
    folder: Annotated[Path, typer.Argument(help="Folder to write the certificate files to.")],
    name: Annotated[
        str, typer.Option(help="Whose keys: 'server' for the daemon, or a camera/subscriber.")
    ] = "server",
) -> None:
    """Write a CURVE keypair: NAME.key (public, to share) and NAME.key_secret (keep private).

    The daemon uses server.key_secret (curve_secret_key); each camera or subscriber gets its
    own pair, and its NAME.key is copied into the daemon's curve_authorized_clients folder.
    """
    from edge.security import SecurityError
    from edge.security import keygen as write_keys

    try:
        public, secret = write_keys(folder, name)
    except SecurityError as err:
        raise fail(str(err), 1) from None
    typer.echo(f"wrote {public} (public) and {secret} (secret, mode 0600)")


@app.command("install-service")
def install_service(
    root: Annotated[
        Path, typer.Option(help="Prefix to install under (a staging folder, or / for real).")
    ] = Path("/"),
    exec_start: Annotated[
        str | None,
        typer.Option(help="The edge executable the unit runs. (default: this installation's)"),
    ] = None,
    user: Annotated[str, typer.Option(help="System user the daemon runs as.")] = "edge",
    force: Annotated[bool, typer.Option(help="Overwrite an existing edge.toml.")] = False,
) -> None:
    """Write the systemd unit and an example /etc/edge/edge.toml (kept if it exists)."""
    from edge.service import default_exec, install

    done = install(root, exec_start=exec_start or default_exec(), user=user, force=force)
    typer.echo(f"wrote {done.unit}")
    typer.echo(f"{'wrote' if done.config_written else 'kept existing'} {done.config}")
    typer.echo(
        f"next: useradd --system --no-create-home {user}; edit {done.config}; "
        "systemctl daemon-reload && systemctl enable --now edge"
    )


@app.command()
def version() -> None:
    """Print the version."""
    typer.echo(__version__)


if __name__ == "__main__":
    app()


def _register_model_tools() -> None:
    from edge.training.cli import train_app
    from edge.training.eval_cli import eval_command, tune_command

    app.add_typer(train_app, name="train")
    app.command("eval")(eval_command)
    app.command("tune")(tune_command)


_register_model_tools()


def _register_bridges() -> None:
    from edge.bridges.cli import bridge_app

    app.add_typer(bridge_app, name="bridge")


_register_bridges()
