"""Operations commands: reload, keygen, install-service (registered in ``edge.cli.main``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from edge.cli.common import fail


def reload(
    pid_file: Annotated[
        Path, typer.Option(help="The pid file the daemon was started with (--pid-file).")
    ],
) -> None:
    """Make a running daemon reload its config and models (SIGHUP); it keeps serving.

    A bad new model or config is refused and logged by the daemon, which keeps the old ones.
    Under systemd, `systemctl reload edge` does the same.
    """
    from edge.daemon.models import ReloadError, signal_reload

    try:
        pid = signal_reload(pid_file)
    except ReloadError as err:
        raise fail(str(err), 1) from None
    typer.echo(f"sent SIGHUP to edge daemon {pid}; its log says whether the reload succeeded")


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
    from edge.protocol.curve import SecurityError
    from edge.protocol.curve import keygen as write_keys

    try:
        public, secret = write_keys(folder, name)
    except SecurityError as err:
        raise fail(str(err), 1) from None
    typer.echo(f"wrote {public} (public) and {secret} (secret, mode 0600)")


def install_service(
    root: Annotated[
        Path, typer.Option(help="Prefix to install under (a staging folder, or / for real).")
    ] = Path("/"),
    exec_start: Annotated[
        str | None,
        typer.Option(help="The edge executable the unit runs. (default: this installation's)"),
    ] = None,
    user: Annotated[str, typer.Option(help="System user the daemon runs as.")] = "edge",
    force: Annotated[
        bool, typer.Option(help="Overwrite an existing edge.toml (and mqtt.toml).")
    ] = False,
    plant: Annotated[
        bool,
        typer.Option(
            "--plant",
            help="Also the units of edge store, edge bridge mqtt and edge view (edge-store, "
            "edge-mqtt, edge-view) and an example /etc/edge/mqtt.toml.",
        ),
    ] = False,
) -> None:
    """Write the systemd unit and an example /etc/edge/edge.toml (kept if it exists)."""
    from edge.tools.service import default_exec, install

    executable = exec_start or default_exec()
    done = install(root, exec_start=executable, user=user, force=force)
    typer.echo(f"wrote {done.unit}")
    typer.echo(f"{'wrote' if done.config_written else 'kept existing'} {done.config}")
    units = "edge"
    if plant:
        from edge.tools.plant_units import install_plant

        for path, written in install_plant(root, exec_start=executable, user=user, force=force):
            typer.echo(f"{'wrote' if written else 'kept existing'} {path}")
        units = "edge edge-store edge-mqtt edge-view"
    typer.echo(
        f"next: useradd --system --no-create-home {user}; edit {done.config}; "
        f"systemctl daemon-reload && systemctl enable --now {units}"
    )
