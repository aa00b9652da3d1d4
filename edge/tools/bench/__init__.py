"""``edge bench``: what this machine sustains, from the bare models to the daemon on sockets.

Modes: ``backend`` (the models alone on pre-made tiles: the ceiling), ``pipeline`` (the daemon's
cascade in process), ``naive`` (each strip alone through both models, no batching, no gate) and
``e2e`` (camera process -> `edge run` process -> subscriber process over loopback ZeroMQ).
See docs/performance.md for what each figure means and this machine class's results.
"""

from edge.tools.bench.runner import MODES, BenchSettings, run_bench, write_json

__all__ = ["MODES", "BenchSettings", "run_bench", "write_json"]
