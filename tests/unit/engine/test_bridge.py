"""``streams.bridge``: counts, half-close, buffered bytes, errors, cancellation, backpressure.

Every behaviour test runs on both loops and on both paths: the protocol-level join
(``protobridge``, taken for socket and tunnel transports) and the ``Pump`` tasks it falls back
to (forced here by making ``join_streams`` decline), so the two cannot drift apart. Peers are
real loopback sockets (``ca`` <-> ``ra`` ==bridge== ``rb`` <-> ``cb``); a tunnel side is a real
``TunnelTransport`` on a carrier that keeps its messages in memory.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest

from natrelay.engine import protobridge, streams
from natrelay.engine.streams import bridge
from natrelay.engine.tunnel import (
    END_MESSAGE,
    StreamEnd,
    TunnelStreamProtocol,
    decode_message,
    encode_abort,
    encode_data,
)

from ._forwarding import LOOP_KINDS, abort, eventually, read_all, read_exact, run, send_all, set_buffers

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("loop_kind", LOOP_KINDS)]

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


@pytest.fixture(params=["protocol", "pump"])
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
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


# ------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("kind", ["tcp", "unix"])
@pytest.mark.parametrize("first", ["a", "b"])
def test_counts_and_half_close_both_ways(loop_kind: str, path: str, kind: str, first: str) -> None:
    """One side ends its output; the other direction keeps flowing until it ends too."""
    up, down = os.urandom(300_000), os.urandom(200_000)

    async def main() -> None:
        ca, a, cb, b = await proxied(kind)
        joined = asyncio.ensure_future(bridge(a, b))
        one, other = (ca, cb) if first == "a" else (cb, ca)
        one_data, other_data = (up, down) if first == "a" else (down, up)
        await send_all(one, one_data, shut=True)
        assert await read_all(other) == one_data  # the end of stream crossed...
        await asyncio.sleep(0.05)
        assert not joined.done()
        await send_all(other, other_data[:1000])  # ...and the half-open direction still carries
        assert await read_exact(one, 1000) == other_data[:1000]
        await send_all(other, other_data[1000:], shut=True)
        assert await read_all(one) == other_data[1000:]
        assert await joined == (len(up), len(down))
        ca.close()
        cb.close()

    go(loop_kind, main)


def test_bytes_buffered_before_the_bridge_come_first(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, cb, b = await proxied()
        await send_all(ca, b"HEADERearly bytes")
        assert await a[0].readexactly(6) == b"HEADER"
        await eventually(lambda: len(a[0]._buffer) == 11)  # type: ignore[attr-defined]
        await send_all(cb, b"from b, also early", shut=True)
        await eventually(lambda: b[0]._eof)  # type: ignore[attr-defined]  # buffered *and* at EOF
        joined = asyncio.ensure_future(bridge(a, b))
        assert await read_exact(cb, 11) == b"early bytes"
        await send_all(ca, b" then later ones", shut=True)
        assert await read_all(cb) == b" then later ones"
        assert await read_all(ca) == b"from b, also early"
        assert await joined == (27, 18)
        ca.close()
        cb.close()

    go(loop_kind, main)


@pytest.mark.parametrize("who", ["a", "b"])
def test_a_reset_on_either_side_resets_the_other(loop_kind: str, path: str, who: str) -> None:
    async def main() -> None:
        ca, a, cb, b = await proxied()
        joined = asyncio.ensure_future(bridge(a, b))
        await send_all(ca, b"x" * 1000)
        await send_all(cb, b"y" * 1000)
        assert await read_exact(cb, 1000) == b"x" * 1000
        assert await read_exact(ca, 1000) == b"y" * 1000
        broken, survivor = (ca, cb) if who == "a" else (cb, ca)
        abort(broken)
        await fails_and_resets(joined, survivor, ConnectionResetError)

    go(loop_kind, main)


def _reset_and_take_the_error(peer: socket.socket, mine: socket.socket) -> None:
    """Reset ``peer`` and let a write on ``mine`` take the error, as a loop's failed write does.

    Blocking on purpose: the loop under test must not read ``mine`` in between. Linux then shows
    the reset to the next read as an end of input (see ``engine/tcpstate.py``).
    """
    fd = mine.fileno()
    abort(peer)
    for _ in range(2000):
        try:
            os.write(fd, b"!")
        except ConnectionResetError:
            return
        time.sleep(0.001)
    raise AssertionError("the reset never reached the socket")


@pytest.mark.parametrize("when", ["before", "during"])
def test_a_reset_whose_error_a_write_took_is_still_a_reset(loop_kind: str, path: str, when: str) -> None:
    """The kernel reports such a reset as end of input; the bridge must not pass it on as one."""
    async def main() -> None:
        ca, a, cb, b = await proxied()
        mine = a[1].get_extra_info("socket")
        if when == "before":  # the loop reads the false end of input before the bridge starts
            _reset_and_take_the_error(ca, mine)
            await eventually(a[0].at_eof)
            joined = asyncio.ensure_future(bridge(a, b))
        else:
            joined = asyncio.ensure_future(bridge(a, b))
            await send_all(ca, b"x" * 1000)
            assert await read_exact(cb, 1000) == b"x" * 1000
            _reset_and_take_the_error(ca, mine)
        await fails_and_resets(joined, cb, ConnectionResetError)

    go(loop_kind, main)


def test_a_reset_taken_by_a_write_after_our_eof_was_asked_is_still_a_reset(loop_kind: str, path: str) -> None:
    """Half-closed with bytes still to write (our FIN not yet out): the state still tells."""
    async def main() -> None:
        ca, a, cb, b = await proxied()
        set_buffers(64 * 1024, ca, a[1].get_extra_info("socket"))
        a[1].transport.set_write_buffer_limits(high=16 << 20)  # hold what ca does not read
        joined = asyncio.ensure_future(bridge(a, b))
        await send_all(cb, b"y" * (4 << 20), shut=True)
        await eventually(lambda: a[1].transport.get_write_buffer_size() > 0)
        await asyncio.sleep(0.1)  # the bridge reads cb's end and asks a's transport for a FIN
        assert a[1].transport.get_write_buffer_size() > 0
        _reset_and_take_the_error(ca, a[1].get_extra_info("socket"))
        await fails_and_resets(joined, cb, ConnectionError)

    go(loop_kind, main)


def test_cancelling_the_bridge_resets_both_sides(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, cb, b = await proxied()
        joined = asyncio.ensure_future(bridge(a, b))
        await send_all(ca, b"ping")
        assert await read_exact(cb, 4) == b"ping"
        joined.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joined
        await expect_reset(ca)
        await expect_reset(cb)
        ca.close()
        cb.close()

    go(loop_kind, main)


def test_a_slow_reader_pauses_the_sender_and_memory_stays_bounded(loop_kind: str, path: str) -> None:
    total = 50 * 1024 * 1024
    block = os.urandom(1 << 20)

    async def main() -> None:
        ca, a, cb, b = await proxied()
        set_buffers(64 * 1024, ca, cb, a[1].get_extra_info("socket"), b[1].get_extra_info("socket"))
        source, destination = a[1].transport, b[1].transport
        joined = asyncio.ensure_future(bridge(a, b))
        loop = asyncio.get_running_loop()
        peak = 0
        paused_seen = 0

        async def sender() -> None:
            for _ in range(total // len(block)):
                await loop.sock_sendall(ca, block)
            ca.shutdown(socket.SHUT_WR)

        async def slow_reader() -> int:
            nonlocal peak, paused_seen
            got = 0
            while True:
                peak = max(peak, destination.get_write_buffer_size())
                if not source.is_reading():  # type: ignore[attr-defined]
                    paused_seen += 1
                chunk = await loop.sock_recv(cb, 256 * 1024)
                if not chunk:
                    return got
                got += len(chunk)
                await asyncio.sleep(0.0005)

        sending = asyncio.ensure_future(sender())
        got = await slow_reader()
        await sending
        assert got == total
        cb.shutdown(socket.SHUT_WR)
        assert await read_all(ca) == b""
        assert await joined == (total, 0)
        assert paused_seen > 0, "the source was never paused"
        # The destination's buffer: its high-water mark (64 KiB) plus at most one read or chunk.
        assert peak < 1024 * 1024, f"destination buffered {peak} bytes"
        ca.close()
        cb.close()

    go(loop_kind, main)


def test_the_tunnel_side_half_closes_and_counts(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        carrier.deliver(encode_data(b"from the tunnel"))
        carrier.deliver(END_MESSAGE)
        assert await read_all(ca) == b"from the tunnel"
        await asyncio.sleep(0.05)
        assert not joined.done() and carrier.closed_with is None
        await send_all(ca, b"to the tunnel", shut=True)
        assert await joined == (13, 15)
        assert carrier.data() == b"to the tunnel"
        assert carrier.sent[-1] == END_MESSAGE
        assert carrier.closed_with == "stream finished"
        ca.close()

    go(loop_kind, main)


def test_a_tcp_reset_aborts_the_tunnel_with_the_reason(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        await send_all(ca, b"partial")
        await eventually(lambda: carrier.data() == b"partial")
        abort(ca)
        with pytest.raises(ConnectionResetError):
            await joined
        kinds = [m[0] for m in carrier.sent]
        assert kinds[-1] == 2 and END_MESSAGE not in carrier.sent  # an abort, never an end of stream
        assert "reset" in carrier.sent[-1][1:].decode().lower()

    go(loop_kind, main)


def test_a_tunnel_abort_resets_the_tcp_side(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        carrier.deliver(encode_data(b"half of it"))
        assert await read_exact(ca, 10) == b"half of it"
        carrier.deliver(encode_abort("disk full"))
        await fails_and_resets(joined, ca, ConnectionResetError, match="disk full")

    go(loop_kind, main)


def test_cancelling_tells_the_tunnel_interrupted(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        await asyncio.sleep(0.01)
        joined.cancel()
        with pytest.raises(asyncio.CancelledError):
            await joined
        assert carrier.sent[-1] == encode_abort("interrupted")
        await expect_reset(ca)
        ca.close()

    go(loop_kind, main)


def test_tunnel_flow_control_pauses_the_tcp_side_and_back(loop_kind: str, path: str) -> None:
    """The carrier's socket full: stop reading the local connection; drained: read it again."""

    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        local = a[1].transport
        await asyncio.sleep(0.01)  # the bridge is running
        carrier.end.pause_writing()  # what the carrier does when its socket's buffer is full
        await send_all(ca, b"first")
        await asyncio.sleep(0.05)
        if path == "protocol":
            assert not local.is_reading()  # type: ignore[attr-defined]
            assert carrier.data() == b""
        else:
            assert carrier.data() == b"first"  # written, and the drain after it waits
        await send_all(ca, b" second")
        await asyncio.sleep(0.05)
        assert b"second" not in carrier.data()
        carrier.end.resume_writing()
        await eventually(lambda: carrier.data() == b"first second")
        await send_all(ca, b"", shut=True)
        carrier.deliver(END_MESSAGE)
        assert await joined == (12, 0)
        ca.close()

    go(loop_kind, main)


def test_a_slow_local_reader_pauses_reading_the_tunnel(loop_kind: str, path: str) -> None:
    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        set_buffers(16 * 1024, ca, a[1].get_extra_info("socket"))
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        chunk = os.urandom(60 * 1024)
        sent = 0
        while carrier.flow.reading and sent < 100:  # the local peer reads nothing meanwhile
            carrier.deliver(encode_data(chunk))
            sent += 1
            await asyncio.sleep(0.001)
        assert not carrier.flow.reading, "the tunnel was never paused"
        assert sent < 40
        got = await read_exact(ca, sent * len(chunk))
        assert got == chunk * sent
        await eventually(lambda: carrier.flow.reading)
        carrier.deliver(END_MESSAGE)
        assert await read_all(ca) == b""
        ca.shutdown(socket.SHUT_WR)
        assert await joined == (0, sent * len(chunk))
        ca.close()

    go(loop_kind, main)


# --------------------------------------------------------------------------- which path
def test_sockets_and_tunnels_are_taken_over(loop_kind: str) -> None:
    async def main() -> None:
        ca, a, cb, b = await proxied("unix")
        joined = protobridge.join_streams(a, b)
        assert joined is not None
        assert type(a[1].transport.get_protocol()).__name__ == "_End"  # type: ignore[attr-defined]
        joined.stop()
        for w in (a[1], b[1]):
            w.transport.abort()
        carrier = MemoryCarrier()
        ca2, a2, _cb2, _b2 = await proxied()
        assert protobridge.join_streams(a2, carrier.streams()) is not None
        for s in (ca, cb, ca2):
            s.close()

    go(loop_kind, main)


def test_pipes_and_foreign_protocols_keep_the_pump_path(loop_kind: str) -> None:
    """stdin/stdout-like pipes cannot be taken over: bridge falls back and still does its job."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(in_r, "rb"))
        wt, wp = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, os.fdopen(out_w, "wb"))
        writer = asyncio.StreamWriter(wt, wp, None, loop)
        ca, b, cb, _unused = await proxied()
        assert protobridge.join_streams((reader, writer), b) is None
        joined = asyncio.ensure_future(bridge((reader, writer), b))
        os.write(in_w, b"from the pipe")
        os.close(in_w)
        assert await read_all(ca) == b"from the pipe"
        await send_all(ca, b"to the pipe", shut=True)
        assert await joined == (13, 11)
        with os.fdopen(out_r, "rb") as f:
            assert f.read() == b"to the pipe"
        cb.close()
        ca.close()

    go(loop_kind, main)


def test_a_subclassed_stream_protocol_is_not_taken_over(loop_kind: str) -> None:
    class Counting(asyncio.StreamReaderProtocol):
        pass

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ca, ra = socket.socketpair()
        reader = asyncio.StreamReader()
        transport, proto = await loop.create_connection(lambda: Counting(reader), sock=ra)
        a = reader, asyncio.StreamWriter(transport, proto, reader, loop)
        cb, _b, cc, c = await proxied()
        assert protobridge.join_streams(a, c) is None
        transport.close()
        for s in (ca, cb, cc):
            s.close()

    go(loop_kind, main)


def test_the_loop_kinds_are_what_they_say(loop_kind: str) -> None:
    async def main() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert go(loop_kind, main).startswith("uvloop" if loop_kind == "uvloop" else "asyncio")


def test_writing_into_a_tunnel_that_ended_cleanly_fails(loop_kind: str, path: str) -> None:
    """The other peer ended its stream and the carrier then closed: not an error until we have more
    to send, and then a failure (a reset locally), never bytes silently dropped."""

    async def main() -> None:
        ca, a, _cb, _b = await proxied()
        carrier = MemoryCarrier()
        joined = asyncio.ensure_future(bridge(a, carrier.streams()))
        carrier.deliver(END_MESSAGE)
        assert await read_all(ca) == b""
        carrier.close("keep-alive timeout")  # clean: the other side had ended its stream
        await asyncio.sleep(0.05)
        assert not joined.done()
        await send_all(ca, b"nobody reads this")
        with pytest.raises(ConnectionResetError, match="Connection lost"):
            await joined
        with pytest.raises((ConnectionResetError, BrokenPipeError)):  # its end was reset
            for _ in range(100):
                await send_all(ca, b"more")
                await asyncio.sleep(0.01)
        ca.close()

    go(loop_kind, main)


class _LostSocket:
    """uvloop's socket stand-in for a transport that lost its socket: options raise ValueError."""

    type = socket.SOCK_STREAM

    def setsockopt(self, *args: object) -> None:
        raise ValueError("I/O operation on closed socket")


class _LostTransport:
    def __init__(self) -> None:
        self.aborted = False

    def get_extra_info(self, name: str) -> object:
        return _LostSocket() if name == "socket" else None

    def abort(self) -> None:
        self.aborted = True


def test_abort_stream_aborts_a_transport_whose_socket_refuses_options(loop_kind: str) -> None:
    """Otherwise the other side of a failed bridge is left open and ``bridge()`` waits on it."""
    transport = _LostTransport()
    writer: Any = type("Writer", (), {"transport": transport})()
    streams.abort_stream(writer, "reset")
    assert transport.aborted
