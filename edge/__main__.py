"""``python -m edge``: the same command line as ``edge``."""

from edge.cli.main import app

app()
