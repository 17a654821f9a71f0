"""Every gauge of a running relay returns to zero when the load leaves (in-process, loopback sockets).

The bug this guards (issue 8/9): a connection refused at the handshake cap was subtracted from
``active`` on close although it was never added, so ``active`` went negative under load.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable

from natrelay.engine.limits import Limits
from natrelay.offset.client import OffsetClient, TunnelError
from natrelay.offset.crypto import Identity
from natrelay.offset.files import RelayTicket
from natrelay.offset.server import OffsetRelayServer, RelayConfig


async def _until(predicate: Callable[[], bool], timeout: float = 20.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def _load_then_leave() -> tuple[dict[str, int], dict[str, object], list[int]]:
    limits = Limits(max_connections=50, max_per_ip=0, max_handshakes=3, max_handshakes_per_ip=0,
                    max_listeners=10, max_listeners_per_ip=1, max_pending_per_listener=4)
    server = OffsetRelayServer(Identity.generate(), RelayConfig(limits=limits, handshake_timeout=2.0,
                                                                refusal_log_interval=0.5))
    (host, port), *_ = await server.start("127.0.0.1", 0)
    ticket = RelayTicket(public_key=server.identity.public_key, address=f"{host}:{port}")
    actives: list[int] = []

    async def sample() -> None:
        while True:
            actives.append(server.stats.active)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    b, a = OffsetClient(Identity.generate(), ticket), OffsetClient(Identity.generate(), ticket)
    other = OffsetClient(Identity.generate(), ticket)
    try:
        # A listener and a tunnel that moves bytes.
        async def echo(key: bytes, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
            writer.write_eof()

        listener = b.listener(echo)
        await listener.listen_once()
        run = asyncio.create_task(listener.run(first=listener._conn))
        reader, writer = await a.connect(b.identity.public_key)
        payload = os.urandom(300_000)
        writer.write(payload)
        writer.write_eof()
        assert await reader.read(-1) == payload
        writer.close()
        # A second listener from the same address is over the per-address listener cap.
        second = other.listener(echo)
        with contextlib.suppress(TunnelError):
            await second.listen_once()
        # A connect to a key that does not listen.
        with contextlib.suppress(TunnelError):
            await a.connect(Identity.generate().public_key)
        # Silent connections hold the 3 handshake slots; the rest are refused at the handshake cap.
        silent = [await asyncio.open_connection(host, port) for _ in range(12)]
        await _until(lambda: server.stats.refusals["handshakes"] >= 9)
        assert server.stats.active >= 0
        for _, w in silent:
            w.close()
        await _until(lambda: server.stats.refusals["listeners_per_ip"] >= 1)
        await second.aclose()
        run.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await run
        await listener.aclose()
        await _until(lambda: not any(server.gauges().values()))
        return server.gauges(), server.stats.snapshot(), actives
    finally:
        sampler.cancel()
        for c in (a, b, other):
            c.close()
        await server.close()


def test_every_gauge_returns_to_zero_and_active_never_goes_negative() -> None:
    gauges, snapshot, actives = asyncio.run(_load_then_leave())
    assert set(gauges.values()) == {0}, gauges
    assert min(actives) >= 0, min(actives)
    refusals = snapshot["refusals"]
    assert isinstance(refusals, dict)
    assert refusals["handshakes"] >= 9 and refusals["listeners_per_ip"] >= 1
    assert snapshot["refused"] == sum(refusals.values())
    assert snapshot["active"] == 0 and snapshot["tunnels_active"] == 0 and snapshot["tunnels_opened"] == 1
