"""A public, read-only JSON endpoint on an address of its own (strelaysrv's ``-status-srv``).

strelaysrv serves ``GET /status`` to anyone on ``:22070`` by default, with
``Access-Control-Allow-Origin: *`` so that the relay pool's web page can read it from a browser.
That document holds counters and settings only (no device, address or session), which is why it
may go without the login the full HTTP surface (:mod:`natrelay.ops.http.server`) demands off
loopback. It runs on aiohttp like that surface, on the server's own loop: routes are GET/HEAD of
a JSON document, anything else is 404 or 405, request bodies are refused, a failing route is one
log line and a 500.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Mapping

from aiohttp import web

from natrelay.ops.http.listen import listen

log = logging.getLogger("natrelay.http")

JsonRoute = Callable[[], object]
HEADERS = {"Access-Control-Allow-Origin": "*", "Cache-Control": "no-store",
           "X-Content-Type-Options": "nosniff"}


class PublicJson:
    """Serves ``routes`` (path -> function returning a JSON-able value) until :meth:`close`."""

    def __init__(self, routes: Mapping[str, JsonRoute]) -> None:
        self.routes = dict(routes)
        self._runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        """Listen on ``host:port`` (empty host: every interface); raises OSError if it cannot bind."""
        app = web.Application(client_max_size=1024)
        for path, route in self.routes.items():
            app.router.add_get(path, self._handler(path, route))  # answers HEAD too
        runner = await listen(app, host, port)
        self._runner = runner
        bound = runner.addresses[0]
        self.address = (str(bound[0]), int(bound[1]))
        return self.address

    @staticmethod
    def _handler(path: str, route: JsonRoute) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            try:
                doc = route()
            except Exception:
                log.exception("HTTP GET %s failed", path)
                return web.Response(status=500, text="internal error\n", headers=HEADERS)
            return web.json_response(doc, headers=HEADERS, dumps=_dumps)

        return handle

    async def close(self) -> None:
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()


def _dumps(doc: object) -> str:
    return json.dumps(doc, indent=4)  # as strelaysrv prints it
