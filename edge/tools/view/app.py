"""The view's web side: one page, its live updates by Server-Sent Events, the strips' JPEGs.

Starlette serves it under uvicorn in the view's one process. A browser gets a snapshot when it
connects, then each new strip and, every second, the counts. Each browser has a bounded queue:
one that stops reading (a laptop closed on the line) is disconnected when it fills, and nothing
upstream waits for it; the daemon never sees the view at all beyond one more subscriber.
Read-only: GET only; it changes nothing anywhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Final

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from edge.tools.view.state import ViewState
from edge.vision.palette import PALETTE

CLIENT_QUEUE: Final = 256  # messages a browser may be behind before it is let go
MAX_CLIENTS: Final = 32
STATS_INTERVAL_S: Final = 1.0


@dataclass(eq=False)
class _Client:
    queue: asyncio.Queue[dict[str, Any] | None] = field(
        default_factory=lambda: asyncio.Queue(CLIENT_QUEUE)
    )

    def end(self) -> None:
        """Its stream ends at its next read: what it had not read yet is let go."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(None)


class Hub:
    """Fans messages out to the connected browsers; fed from any thread."""

    def __init__(self) -> None:
        self.clients: set[_Client] = set()
        self.let_go = 0  # browsers disconnected for not keeping up
        self._loop: asyncio.AbstractEventLoop | None = None

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop

    def publish(self, message: dict[str, Any]) -> None:
        """From a subscriber thread: hand the message to the event loop, never waiting."""
        if self._loop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: shutting down
                self._loop.call_soon_threadsafe(self.fan_out, message)

    def fan_out(self, message: dict[str, Any]) -> None:
        for client in list(self.clients):
            try:
                client.queue.put_nowait(message)
            except asyncio.QueueFull:
                self.clients.discard(client)
                self.let_go += 1
                client.end()


def _sse(message: dict[str, Any]) -> str:
    return f"event: {message['type']}\ndata: {json.dumps(message, separators=(',', ':'))}\n\n"


def _page() -> str:
    html = files("edge.tools.view").joinpath("page.html").read_text(encoding="utf-8")
    return html.replace("/*PALETTE*/[]", json.dumps(list(PALETTE)))


def create_app(state: ViewState, hub: Hub) -> Starlette:
    page = _page()

    async def index(request: Request) -> HTMLResponse:
        return HTMLResponse(page)

    async def snapshot(request: Request) -> JSONResponse:
        return JSONResponse(state.snapshot())

    async def strip_image(request: Request) -> Response:
        camera = request.path_params["camera"]
        image = state.image(camera, int(request.path_params["seq"]))
        if image is None:
            return Response("that strip is no longer kept", status_code=404)
        return Response(image, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})

    async def events(request: Request) -> Response:
        if len(hub.clients) >= MAX_CLIENTS:
            return Response(f"more than {MAX_CLIENTS} browsers connected", status_code=503)
        client = _Client()
        hub.clients.add(client)

        async def stream() -> AsyncIterator[str]:
            try:
                yield _sse(state.snapshot())
                while True:
                    message = await client.queue.get()
                    if message is None:
                        return
                    yield _sse(message)
            finally:
                hub.clients.discard(client)

        return StreamingResponse(
            stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        hub.bind(asyncio.get_running_loop())
        ticker = asyncio.create_task(_tick(state, hub))
        try:
            yield
        finally:
            ticker.cancel()
            for client in list(hub.clients):  # open streams end, so shutdown is not held up
                client.end()

    routes = [
        Route("/", index),
        Route("/events", events),
        Route("/api/snapshot", snapshot),
        Route("/strip/{camera}/{seq:int}.jpg", strip_image),
    ]
    return Starlette(routes=routes, lifespan=lifespan)


async def _tick(state: ViewState, hub: Hub) -> None:
    while True:
        await asyncio.sleep(STATS_INTERVAL_S)
        hub.fan_out(state.stats())
