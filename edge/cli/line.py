"""CLI commands around a line: camera, record, replay, listen (registered in ``edge.main``)."""

from __future__ import annotations

import itertools
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from edge.cli.common import (
    CurveClientKey,
    CurveServerKey,
    bind_endpoints,
    check_endpoint_option,
    connect_endpoints,
    curve_pair,
    fail,
)
from edge.cli.progress import Progress
from edge.logs import configure

# The line meta convention (edge.protocol.linemeta): the same three options on camera and replay.
Meta = Annotated[
    list[str] | None,
    typer.Option(
        "--meta",
        help="key=value put in every frame's meta; repeat (coil_id=C123, side=top; "
        "docs/integration.md). Values stay strings.",
    ),
]
StripLengthMm = Annotated[
    float | None,
    typer.Option(
        "--strip-length-mm",
        help="Coil length one strip covers: meta position_mm advances by it per strip "
        "(per camera), and strip_length_mm is set.",
    ),
]
StartMm = Annotated[
    float,
    typer.Option("--start-mm", help="position_mm of the first strip (with --strip-length-mm)."),
]


def _meta_stamp(meta: list[str] | None, strip_length_mm: float | None, start_mm: float) -> Any:
    from edge.line.stamping import MetaStamp
    from edge.protocol.linemeta import parse_assignments

    try:
        return MetaStamp(parse_assignments(meta), strip_length_mm, start_mm)
    except ValueError as err:
        raise fail(str(err)) from None


def _say_waiting(endpoint: str, timeout_s: float) -> None:
    typer.echo(
        f"waiting for a subscriber on {endpoint} (up to {timeout_s:g} s, then sending anyway)",
        err=True,
    )


def camera(
    to: Annotated[
        str,
        typer.Option(help="Endpoint the camera BINDs, e.g. tcp://*:5555.", callback=bind_endpoints),
    ],
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
    meta: Meta = None,
    strip_length_mm: StripLengthMm = None,
    start_mm: StartMm = 0.0,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Publish strip images as a camera would (from a folder, or synthetic ones).

    From a folder, each frame's meta names its file (``file``); --meta and --strip-length-mm
    add the coil and the position along it.
    """
    from edge.line.camera import ImageLoadError, images_in, load_strip, run_camera
    from edge.protocol import ENCODINGS
    from edge.protocol.curve import SecurityError

    curve = curve_pair(curve_server_key, curve_client_key)

    if encoding not in ENCODINGS:
        raise fail(f"--encoding must be one of {list(ENCODINGS)}, got {encoding!r}")
    stamp = _meta_stamp(meta, strip_length_mm, start_mm)
    configure()
    if images is not None:
        try:
            paths = images_in(images)
        except ImageLoadError as err:
            raise fail(str(err)) from None
        ordered = itertools.cycle(paths) if loop else iter(paths)
        frames: Any = (
            (load_strip(p, gray=not color), stamp.next_meta(camera_id, file=p.name))
            for p in ordered
        )
    else:
        from edge.vision.synthetic import strip_stream

        images_only: Any = (s.image for s in strip_stream(seed, defect_rate=defect_rate))
        if color:
            import numpy as np

            images_only = (np.repeat(f[:, :, None], 3, axis=2) for f in images_only)
        frames = (
            (image, stamp.next_meta(camera_id)) if stamp.active else image for image in images_only
        )
    try:
        sent = run_camera(
            to,
            frames,
            camera=camera_id,
            fps=fps or None,
            encoding=encoding,
            count=count,
            wait_subscriber_s=wait_subscriber,
            curve=curve,
            on_waiting=_say_waiting,
        )
    except SecurityError as err:
        raise fail(str(err)) from None
    except ImageLoadError as err:  # images load lazily: a bad file shows up mid-run
        raise fail(str(err), 1) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(f"sent {sent} frames", err=True)


def record(
    out: Annotated[Path, typer.Option(help="Recording file to write (.edgerec).")],
    source: Annotated[
        list[str] | None,
        typer.Option("--source", "-s", help="Endpoint to CONNECT to; repeat for several."),
    ] = None,
    bind: Annotated[bool, typer.Option(help="BIND the sources instead of connecting.")] = False,
    frames: Annotated[int | None, typer.Option(help="Stop after this many messages.")] = None,
    duration: Annotated[float | None, typer.Option(help="Stop after this many seconds.")] = None,
) -> None:
    """Record camera messages exactly as received, for replay and tests.

    Progress goes to stderr while it runs. At the end (also on Ctrl-C) it prints one summary
    line on stderr, "recorded N messages to FILE"; there is no JSON summary.
    """
    from edge.line.recording import record as record_messages

    if not source:
        raise fail("give at least one --source")
    # Not a callback: whether these are binds depends on --bind, which may come after them.
    check_endpoint_option(source, bind=bind, option="--source")
    configure()
    stop = threading.Event()
    done = [0]

    def on_record(n: int) -> None:
        done[0] = n
        progress.update(n)

    try:
        with Progress("recording", frames, "messages") as progress:
            n = record_messages(
                source,
                out,
                frames=frames,
                duration_s=duration,
                bind=bind,
                stop=stop,
                on_record=on_record,
            )
    except KeyboardInterrupt:
        stop.set()
        typer.echo(f"recorded {done[0]} messages to {out}", err=True)
        raise typer.Exit(130) from None
    typer.echo(f"recorded {n} messages to {out}", err=True)


def replay(
    recording: Annotated[Path, typer.Argument(help="A file written by `edge record`.")],
    to: Annotated[
        str,
        typer.Option(
            help="Endpoint to BIND and publish on, e.g. tcp://*:5555.", callback=bind_endpoints
        ),
    ],
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
    meta: Meta = None,
    strip_length_mm: StripLengthMm = None,
    start_mm: StartMm = 0.0,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Publish a recording again, message for message.

    Progress goes to stderr while it runs; at the end one summary line on stderr,
    "replayed N messages". With --meta or --strip-length-mm each frame's meta is stamped
    (recorded keys kept unless overridden); other messages, and frames whose header cannot be
    read, go out as recorded.
    """
    from edge.line.camera import replay as replay_recording
    from edge.line.recording import RecordingError, count_records
    from edge.protocol.curve import SecurityError

    curve = curve_pair(curve_server_key, curve_client_key)
    stamp = _meta_stamp(meta, strip_length_mm, start_mm)
    configure()
    try:
        with Progress("replaying", count_records(recording), "messages") as progress:
            n = replay_recording(
                recording,
                to,
                fps=fps,
                as_fast_as_possible=as_fast_as_possible,
                wait_subscriber_s=wait_subscriber,
                allow_truncated=allow_truncated,
                curve=curve,
                stamp=stamp if stamp.active else None,
                on_sent=progress.update,
                on_waiting=_say_waiting,
            )
    except (RecordingError, SecurityError) as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
    typer.echo(f"replayed {n} messages", err=True)


def listen(
    source: Annotated[
        str,
        typer.Option(
            "--source", "-s", help="The daemon's publish endpoint.", callback=connect_endpoints
        ),
    ] = "tcp://127.0.0.1:5556",
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    count: Annotated[int | None, typer.Option(help="Stop after this many events.")] = None,
    status: Annotated[bool, typer.Option(help="Also print the periodic status messages.")] = True,
    quiet_warn_s: Annotated[
        float,
        typer.Option(
            "--quiet-warn-s",
            min=0,
            help="Warn on stderr when nothing at all arrives for this many seconds (0: never).",
        ),
    ] = 5.0,
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Print the daemon's events, one line each, on stdout.

    What it listens to, and a warning when the daemon stays silent, go to stderr.
    """
    from edge.line.listen import format_event, to_json_line, topics
    from edge.line.listen import listen as listen_events
    from edge.protocol.curve import SecurityError

    curve = curve_pair(curve_server_key, curve_client_key)

    def show(topic: str, body: dict) -> None:
        typer.echo(to_json_line(body) if json_lines else format_event(topic, body))

    def quiet(seconds: float) -> None:
        typer.echo(
            f"no message from {source} for {seconds:g} s: is the daemon running, "
            "and is this its --publish endpoint?",
            err=True,
        )

    prefixes = ", ".join(f"{t}*" for t in topics(status))
    typer.echo(f"listening to {source} for {prefixes}", err=True)
    try:
        listen_events(
            source,
            show,
            count=count,
            status=status,
            curve=curve,
            quiet_warn_s=quiet_warn_s or None,
            on_quiet=quiet,
        )
    except SecurityError as err:
        raise fail(str(err)) from None
    except KeyboardInterrupt:
        raise typer.Exit(130) from None
