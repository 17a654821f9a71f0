"""ForwardEngine's session and global rate limits: real sockets forwarded no faster than allowed.

A throttle pauses a session after a wake-up moved at most one chunk each way, so the floor allows
that much; only the lower bound on time is asserted (a limit that lets bytes through faster is broken); a
loaded machine can only make a transfer slower, so the upper bound is loose.
"""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from natrelay.engine.forward import RATE_CHUNK, ForwardEngine, Method, rate_burst
from tests.unit.engine._forwarding import METHODS, run, skip_if_unsupported, tcp_pair


async def _transfer(method: Method, sizes: list[int], session_rate: float | None,
                    global_rate: float | None) -> float:
    loop = asyncio.get_running_loop()
    engine = ForwardEngine(loop, method=method, session_rate=session_rate, global_rate=global_rate)
    ends: list[tuple[socket.socket, socket.socket]] = []
    for _ in sizes:
        sender, relay_a = tcp_pair()
        relay_b, receiver = tcp_pair()
        engine.start(relay_a, relay_b)
        sender.setblocking(False)
        receiver.setblocking(False)
        ends.append((sender, receiver))
    start = time.monotonic()

    async def one(sender: socket.socket, receiver: socket.socket, size: int) -> None:
        payload = bytes(range(256)) * (size // 256)
        send = asyncio.ensure_future(loop.sock_sendall(sender, payload))
        got = 0
        while got < len(payload):
            chunk = await loop.sock_recv(receiver, 65536)
            assert chunk
            got += len(chunk)
        await send
        sender.close()
        receiver.close()

    await asyncio.gather(*(one(s, r, n) for (s, r), n in zip(ends, sizes, strict=True)))
    elapsed = time.monotonic() - start
    engine.close()
    return elapsed


@pytest.mark.parametrize("method", METHODS)
def test_session_limit_holds_on_both_forwarding_paths(method: Method) -> None:
    skip_if_unsupported(method)
    rate, size = 256 * 1024.0, 512 * 1024
    elapsed = run("asyncio", lambda: _transfer(method, [size], rate, None))
    floor = (size - rate_burst(rate) - 2 * RATE_CHUNK) / rate  # a wake-up's chunk each way, then it pauses
    assert floor * 0.95 <= elapsed < floor * 10, (elapsed, floor)


@pytest.mark.parametrize("method", METHODS)
def test_global_limit_is_shared_by_every_session(method: Method) -> None:
    skip_if_unsupported(method)
    rate, sizes = 256 * 1024.0, [256 * 1024] * 3
    elapsed = run("asyncio", lambda: _transfer(method, sizes, None, rate))
    floor = (sum(sizes) - rate_burst(rate) - 2 * RATE_CHUNK * len(sizes)) / rate
    assert floor * 0.95 <= elapsed < floor * 10, (elapsed, floor)


def test_unlimited_engines_take_the_fast_path() -> None:
    async def main() -> None:
        engine = ForwardEngine(asyncio.get_running_loop())
        a, b = socket.socketpair()
        c, d = socket.socketpair()
        session = engine.start(b, c)
        assert session.meter is None
        engine.close()
        for s in (a, d):
            s.close()

    run("asyncio", main)
