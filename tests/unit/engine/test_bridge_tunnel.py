"""``streams.bridge`` between a socket and a tunnel stream: half-close, counts, resets and aborts
with their reasons, cancellation, flow control both ways, a tunnel that ended cleanly.

Every test runs on both loops and on both paths (see ``_bridging``).
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from natrelay.engine.streams import bridge
from natrelay.engine.tunnel import END_MESSAGE, encode_abort, encode_data

from ._bridging import MemoryCarrier, bridge_path, expect_reset, fails_and_resets, go, proxied
from ._forwarding import LOOP_KINDS, abort, eventually, read_all, read_exact, send_all, set_buffers

pytestmark = [pytest.mark.timeout(60), pytest.mark.parametrize("loop_kind", LOOP_KINDS)]
__all__ = ["bridge_path"]  # a fixture (``path``): pytest finds it in this module


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
