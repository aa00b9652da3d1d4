"""python -m build_engine models/classifier models/segmenter --out engines/ --fp16 --max-batch 32"""

from __future__ import annotations

import typer

from build_engine.cli import build

app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)


app.command()(build)

if __name__ == "__main__":
    app()
