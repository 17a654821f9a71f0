"""``streams.bridge`` between two sockets: counts, half-close, buffered bytes, errors,
cancellation, backpressure; which transports take the protocol-level join.

Every behaviour test runs on both loops and on both paths (see ``_bridging``); the tunnel side
is in ``test_bridge_tunnel``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from typing import Any

import pytest

from natrelay.engine import protobridge, streams
from natrelay.engine.streams import bridge

from ._bridging import MemoryCarrier, bridge_path, expect_reset, fails_and_resets, go, proxied
from ._forwarding import LOOP_KINDS, abort, eventually, read_all, read_exact, send_all, set_buffers

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("loop_kind", LOOP_KINDS)]
__all__ = ["bridge_path"]  # a fixture (``path``): pytest finds it in this module


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
