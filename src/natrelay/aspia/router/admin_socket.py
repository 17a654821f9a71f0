"""The local admin socket: one JSON request line in, one JSON answer line out.

``aspia_router --status`` and ``--disconnect`` talk to the running router through a Unix socket
in its data directory, created with mode 0600, so only the account the router runs as (and
root) can query or control it. No password is needed: the file permission is the access
control, as with most daemons' control sockets. Requests are bounded before parsing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

log = logging.getLogger("natrelay.aspia.router")

SOCKET_NAME: Final = "router.sock"
MAX_REQUEST: Final = 64 * 1024
MAX_ANSWER: Final = 64 * 1024 * 1024
REQUEST_TIMEOUT: Final = 10.0

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class AdminSocketError(Exception):
    """The router could not be reached or answered nonsense; the message is for the operator."""


def decode_request(line: bytes) -> dict[str, Any]:
    """Parse one request line; any malformed input becomes an error answer, never an exception."""
    if len(line) > MAX_REQUEST:
        raise ValueError("request too long")
    value = json.loads(line.decode("utf-8"))
    if not isinstance(value, dict):
        raise ValueError("request must be a JSON object")
    return value


class AdminSocketServer:
    """Serves :data:`Handler` on a Unix socket with mode 0600."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        old = os.umask(0o177)  # the socket file is born 0600: no window where others may connect
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(self.path),
                                                           limit=MAX_REQUEST + 1)
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                line = await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
                answer = self._handler(decode_request(line))
            except (ValueError, UnicodeDecodeError, asyncio.LimitOverrunError) as exc:
                answer = {"ok": False, "error": f"bad request: {exc}"}
            writer.write(json.dumps(answer).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def request(path: Path, message: dict[str, Any], timeout: float = REQUEST_TIMEOUT) -> dict[str, Any]:
    """Blocking client for the CLI: send one request, return the answer object."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except FileNotFoundError:
            raise AdminSocketError(f"no router is running with the data directory {path.parent} "
                                   f"({path} does not exist)") from None
        except PermissionError:
            raise AdminSocketError(f"permission denied on {path}: run as the router's user") from None
        except OSError as exc:
            raise AdminSocketError(f"cannot reach the router at {path}: {exc.strerror or exc}") from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_ANSWER:
                raise AdminSocketError("answer from the router too large")
    try:
        answer = json.loads(b"".join(chunks))
    except ValueError:
        raise AdminSocketError("the router sent an unreadable answer") from None
    if not isinstance(answer, dict):
        raise AdminSocketError("the router sent an unreadable answer")
    return answer
