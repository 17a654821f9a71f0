"""A minimal HTTP/1.1 server for read-only JSON endpoints (status pages), on asyncio streams.

Why not a framework: a status page is one GET answered with a JSON document; this keeps the relay
free of a web stack for that. Requests are bounded (8 KiB of head, 15 s to send it, as strelaysrv's
ReadTimeout), every response closes the connection, and unknown paths get 404.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable, Mapping

log = logging.getLogger(__name__)

MAX_HEAD = 8 * 1024
READ_TIMEOUT = 15.0

Route = Callable[[], object]


async def _answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                  routes: Mapping[str, Route]) -> None:
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError, OSError):
        return
    line = head.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        status, body, ctype = "400 Bad Request", b"bad request\n", "text/plain"
    else:
        method, target = parts[0], parts[1].split("?", 1)[0]
        route = routes.get(target)
        if route is None:
            status, body, ctype = "404 Not Found", b"404 page not found\n", "text/plain"
        elif method not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", b"method not allowed\n", "text/plain"
        else:
            status, ctype = "200 OK", "application/json"
            body = json.dumps(route(), indent=4).encode()
            if method == "HEAD":
                body = b""
    writer.write((f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                  "Access-Control-Allow-Origin: *\r\nConnection: close\r\n\r\n").encode() + body)
    with contextlib.suppress(OSError):
        await writer.drain()


async def serve_json(host: str, port: int, routes: Mapping[str, Route]) -> asyncio.Server:
    """Listen on ``host:port``; raises OSError if it cannot bind."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _answer(reader, writer, routes)
        except Exception:
            log.exception("status request failed")
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    return await asyncio.start_server(handle, host or None, port, limit=MAX_HEAD)
