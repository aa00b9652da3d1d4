"""What every CLI module shares: the error exit, endpoint checks, the repeated --source option,
OpenVINO's device and precision options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.protocol.endpoints import check_endpoint

EndpointValue = str | list[str] | None


def _checked(value: EndpointValue, *, bind: bool, option: str | None = None) -> EndpointValue:
    for endpoint in [value] if isinstance(value, str) else value or []:
        try:
            check_endpoint(endpoint, bind=bind)
        except ValueError as err:
            # From a callback, click fills in the option; from a command body, name it here.
            hint = None if option is None else f"'{option}'"
            raise typer.BadParameter(str(err), param_hint=hint) from None
    return value


def bind_endpoints(value: EndpointValue) -> EndpointValue:
    """Typer callback for an option of endpoints to BIND: usage error (exit 2) if one is bad."""
    return _checked(value, bind=True)


def connect_endpoints(value: EndpointValue) -> EndpointValue:
    """Typer callback for an option of endpoints to CONNECT to: usage error if one is bad."""
    return _checked(value, bind=False)


def check_endpoint_option(value: EndpointValue, *, bind: bool, option: str) -> None:
    """The callbacks' check, for an option whose bind-or-connect another flag decides."""
    _checked(value, bind=bind, option=option)


Sources = Annotated[
    list[str] | None,
    typer.Option(
        "--source",
        "-s",
        help="Endpoint to CONNECT to; repeat for several.",
        callback=connect_endpoints,
    ),
]


def _openvino_precision(value: str) -> str:
    from edge.vision.backends.openvino import PRECISIONS

    if value not in PRECISIONS:
        raise typer.BadParameter(f"must be one of {', '.join(PRECISIONS)}; got {value!r}")
    return value


OpenVinoDevice = Annotated[
    str, typer.Option("--openvino-device", help="OpenVINO's device: CPU, GPU, GPU.1, NPU.")
]
OpenVinoPrecision = Annotated[
    str,
    typer.Option(
        "--openvino-precision",
        help="OpenVINO's inference precision: f32 | bf16 | f16 | auto (the device's default).",
        callback=_openvino_precision,
    ),
]


def fail(message: str, code: int = 2) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code)


CurveServerKey = Annotated[Path | None, typer.Option(help="CURVE: the daemon's public server.key.")]
CurveClientKey = Annotated[
    Path | None, typer.Option(help="CURVE: this client's .key_secret (authorized by the daemon).")
]


def curve_pair(server_key: Path | None, client_key: Path | None) -> tuple[Path, Path] | None:
    """Both CURVE keys, or neither; one alone is a mistake worth naming."""
    if server_key is not None and client_key is not None:
        return server_key, client_key
    if server_key is not None or client_key is not None:
        raise fail("CURVE needs both --curve-server-key and --curve-client-key")
    return None
