"""Shared helpers for the forwarding-engine tests: loops, socket pairs, a relay rig."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from natrelay.engine.forward import ForwardEngine, Method
from natrelay.engine.session import ForwardSession
from natrelay.engine.splice import splice_available

T = TypeVar("T")

LOOP_KINDS = ["asyncio", "uvloop"]
METHODS: list[Method] = ["splice", "portable"]
#: How the engine watches its sockets: its own epoll (the default on Linux) or the loop's readers.
POLLERS = ["epoll", "loop"]


def loop_factory(kind: str) -> Callable[[], asyncio.AbstractEventLoop]:
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return uvloop.new_event_loop  # type: ignore[no-any-return]
    return asyncio.new_event_loop


def skip_if_unsupported(method: Method) -> None:
    if method == "splice" and not splice_available():
        pytest.skip("splice(2) not available")


def run(kind: str, main: Callable[[], Awaitable[T]]) -> T:
    with asyncio.Runner(loop_factory=loop_factory(kind)) as runner:
        return runner.run(main())  # type: ignore[arg-type]


def tcp_pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair over 127.0.0.1: (client end, server end)."""
    with socket.create_server(("127.0.0.1", 0)) as srv:
        c = socket.create_connection(srv.getsockname())
        s, _ = srv.accept()
    return c, s


def stream_pair(kind: str) -> tuple[socket.socket, socket.socket]:
    return tcp_pair() if kind == "tcp" else socket.socketpair()


def open_fds() -> int:
    """Descriptors open in this process, after collecting garbage.

    Objects left by earlier tests (event loops, sockets) close their descriptors when collected;
    without collecting first, that can happen between two counts and look like a change.
    """
    gc.collect()
    return len(os.listdir("/proc/self/fd"))


def set_buffers(size: int, *socks: socket.socket) -> None:
    for s in socks:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, size)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)


def abort(sock: socket.socket) -> None:
    """Close with a TCP reset."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


async def read_all(sock: socket.socket, *, expect_reset: bool = False) -> bytes:
    """Read until EOF (or, if allowed, a reset)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while True:
        try:
            chunk = await loop.sock_recv(sock, 1 << 16)
        except ConnectionResetError:
            if expect_reset:
                return bytes(out)
            raise
        if not chunk:
            return bytes(out)
        out += chunk


async def read_exact(sock: socket.socket, n: int) -> bytes:
    loop = asyncio.get_running_loop()
    out = bytearray()
    while len(out) < n:
        chunk = await loop.sock_recv(sock, min(1 << 16, n - len(out)))
        if not chunk:
            raise EOFError(f"EOF after {len(out)} of {n} bytes")
        out += chunk
    return bytes(out)


async def send_all(sock: socket.socket, data: bytes, *, shut: bool = False) -> None:
    await asyncio.get_running_loop().sock_sendall(sock, data)
    if shut:
        sock.shutdown(socket.SHUT_WR)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def eventually(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not cond():
        if loop.time() > end:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.005)


@dataclass
class Rig:
    """client_a <-> relay_a ==engine== relay_b <-> client_b."""

    engine: ForwardEngine
    session: ForwardSession
    ca: socket.socket
    cb: socket.socket
    ra: socket.socket
    rb: socket.socket
    closes: list[str] = field(default_factory=list)

    def close_clients(self) -> None:
        for s in (self.ca, self.cb):
            if s.fileno() >= 0:
                s.close()


def make_rig(method: Method, kind: str = "unix", *, engine: ForwardEngine | None = None,
             poller: str = "auto", buffers: int | None = None, **start: Any) -> Rig:
    loop = asyncio.get_running_loop()
    if engine is None:
        engine = ForwardEngine(loop, method=method, poller=poller)
    ca, ra = stream_pair(kind)
    rb, cb = stream_pair(kind)
    if buffers is not None:
        set_buffers(buffers, ca, ra, rb, cb)
    ca.setblocking(False)
    cb.setblocking(False)
    closes: list[str] = []
    session = engine.start(ra, rb, method=method, on_close=lambda s, r: closes.append(r), **start)
    return Rig(engine, session, ca, cb, ra, rb, closes)
