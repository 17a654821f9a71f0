"""What the ``streams.bridge`` tests share: the path fixture, loopback peers, a memory carrier.

The behaviour tests run on both paths: the protocol-level join (``protobridge``, taken for socket
and tunnel transports) and the ``Pump`` tasks it falls back to (forced by making ``join_streams``
decline), so the two cannot drift apart. Peers are real loopback sockets (``ca`` <-> ``ra``
==bridge== ``rb`` <-> ``cb``); a tunnel side is a real ``TunnelTransport`` on a carrier that keeps
its messages in memory.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from natrelay.engine import protobridge, streams
from natrelay.engine.tunnel import StreamEnd, TunnelStreamProtocol, decode_message

from ._forwarding import read_all, run

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(name="path", params=["protocol", "pump"])
def bridge_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run on the protocol path (and check it was taken) or force the Pump path."""
    taken: list[object] = []
    real = protobridge.join_streams

    def spy(a: Streams, b: Streams) -> protobridge.JoinedStreams | None:
        joined = real(a, b) if request.param == "protocol" else None
        taken.append(joined)
        return joined

    monkeypatch.setattr(streams, "join_streams", spy)
    yield request.param
    assert taken, "bridge() was not called"
    if request.param == "protocol":
        assert all(j is not None for j in taken), "the protocol path was not taken"


def go(loop_kind: str, main: Callable[[], Awaitable[Any]]) -> Any:
    async def bounded() -> Any:
        return await asyncio.wait_for(main(), 30)

    return run(loop_kind, bounded)


async def proxied(kind: str = "tcp") -> tuple[socket.socket, Streams, socket.socket, Streams]:
    """``ca``, the streams of ``ra``, the streams of ``rb``, ``cb`` (the peers are raw sockets)."""
    if kind == "tcp":
        pairs = []
        for _ in range(2):
            with socket.create_server(("127.0.0.1", 0)) as srv:
                c = socket.create_connection(srv.getsockname())
                s, _ = srv.accept()
            pairs.append((c, s))
        (ca, ra), (cb, rb) = pairs
    else:
        ca, ra = socket.socketpair()
        cb, rb = socket.socketpair()
    ca.setblocking(False)
    cb.setblocking(False)
    a = await asyncio.open_connection(sock=ra)
    b = await asyncio.open_connection(sock=rb)
    return ca, a, cb, b


async def expect_reset(sock: socket.socket) -> None:
    """The peer must see a reset (SO_LINGER 0), not an end of stream."""
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(read_all(sock), 5)


async def fails_and_resets(joined: asyncio.Future[Any], survivor: socket.socket,
                           error: type[BaseException], match: str | None = None) -> None:
    """The bridge fails with ``error`` and the surviving peer sees a reset, not an end."""
    with pytest.raises(error, match=match):
        await joined
    await expect_reset(survivor)
    survivor.close()


# ---------------------------------------------------------------------------- a memory carrier
class _Flow:
    """The carrier's socket transport as the tunnel sees it: reading state and write buffer."""

    def __init__(self) -> None:
        self.reading = True
        self.buffered = 0

    def is_reading(self) -> bool:
        return self.reading

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def get_write_buffer_size(self) -> int:
        return self.buffered


class MemoryCarrier:
    """A ``MessageCarrier`` that keeps what the tunnel sends; the test plays the other peer."""

    def __init__(self) -> None:
        self.flow = _Flow()
        self.transport: Any = self.flow
        self.closing = False
        self.sent: list[bytes] = []
        self.closed_with: str | None = None
        self.aborted_with: str | None = None
        self.loop = asyncio.get_running_loop()
        self.reader = asyncio.StreamReader()
        self.end = StreamEnd(TunnelStreamProtocol(self.reader, loop=self.loop))

    def streams(self) -> Streams:
        app = self.end.app
        tunnel = self.end.open(self, {})
        return self.reader, asyncio.StreamWriter(tunnel, app, self.reader, self.loop)  # type: ignore[arg-type]

    def send_app(self, messages: list[bytes]) -> None:
        if not self.closing:
            self.sent.extend(messages)

    def maybe_finish(self) -> None:
        if self.end.finished:
            self.close("stream finished")

    def close(self, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.closed_with = reason
            self.loop.call_soon(self.end.connection_lost, reason)

    def abort(self, reason: str) -> None:
        if not self.closing:
            self.closing = True
            self.aborted_with = reason
            self.loop.call_soon(self.end.connection_lost, reason)

    def deliver(self, message: bytes) -> None:
        """A message from the other peer, as a carrier hands it on."""
        problem = self.end.deliver(message)
        if problem is not None:
            self.abort(problem)
        else:
            self.maybe_finish()

    def data(self) -> bytes:
        return b"".join(d for d in (decode_message(m) for m in self.sent if m[0] == 0) if d is not None)
