"""``edge view``: the live operator view in a browser (needs the ``view`` extra)."""

from __future__ import annotations

import importlib.util
from typing import Annotated

import typer

from edge.cli.common import CurveClientKey, CurveServerKey, connect_endpoints, curve_pair, fail
from edge.logs import configure


def view(
    source: Annotated[
        str,
        typer.Option(
            "--source", "-s", help="The daemon's publish endpoint.", callback=connect_endpoints
        ),
    ] = "tcp://127.0.0.1:5556",
    cameras: Annotated[
        list[str] | None,
        typer.Option(
            "--cameras",
            help="A camera's endpoint, for the strips' pixels; repeat per camera. Without: "
            "strips show as outlines on grey.",
            callback=connect_endpoints,
        ),
    ] = None,
    listen: Annotated[
        str,
        typer.Option(help="HOST:PORT to serve the page on; 0.0.0.0:8080 for the whole LAN."),
    ] = "127.0.0.1:8080",
    curve_server_key: CurveServerKey = None,
    curve_client_key: CurveClientKey = None,
) -> None:
    """Serve a live, read-only page: each camera's last strips with their defects outlined,
    the coil map, counts per class, and a banner when something is wrong."""
    for module in ("starlette", "uvicorn"):
        if importlib.util.find_spec(module) is None:
            raise fail(f"{module} is not installed: pip install 'edge[view]'")
    from edge.protocol.curve import SecurityError
    from edge.tools.view.server import parse_listen, run_view

    curve = curve_pair(curve_server_key, curve_client_key)
    try:
        parse_listen(listen)
    except ValueError as err:
        raise fail(str(err)) from None
    configure()
    typer.echo(f"edge view: http://{listen}/ (events from {source})", err=True)
    try:
        run_view(source, cameras or [], listen, curve=curve)
    except (ValueError, OSError, SecurityError) as err:
        raise fail(str(err)) from None
