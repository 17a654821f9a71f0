"""The relay's peer listener under cheap floods, driven in-process with real loopback sockets.

Every rule of the flood guard closes the right connection, counts it under its reason, and
leaves the listener's counts at zero once the connections are gone, while a real pair still
forms (keys come straight from the listener's pool).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from natrelay.aspia.proto import router_common_pb2
from natrelay.aspia.relay.keypool import KeyPool
from natrelay.aspia.relay.listener_config import PeerListenerConfig, connection_limits
from natrelay.aspia.relay.server import PeerListener
from natrelay.engine.floodguard import FloodLimits
from tests.unit.aspia.relay.standin import peer, secret

Stream = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


async def _until(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def listener(**changes: object) -> AsyncIterator[PeerListener]:
    pool = KeyPool(10)
    config = PeerListenerConfig("127.0.0.1", 0, 60.0, **changes)  # type: ignore[arg-type]
    lst = PeerListener(pool, config)
    lst.start()
    lst.keys = pool.on_connected()  # type: ignore[attr-defined]
    try:
        yield lst
    finally:
        lst.close()


def port(lst: PeerListener) -> int:
    assert lst._listener is not None
    return int(lst._listener.getsockname()[1])


async def connect(lst: PeerListener, source: str = "127.0.0.1") -> Stream:
    return await asyncio.open_connection("127.0.0.1", port(lst), local_addr=(source, 0))


async def paired(lst: PeerListener) -> tuple[Stream, Stream]:
    """A host and a client paired through ``lst`` with one of its keys, a byte already relayed."""
    key = lst.keys.pop()  # type: ignore[attr-defined]
    creds = router_common_pb2.RelayCredentials(host="127.0.0.1", port=port(lst),
                                               key=key.to_proto(), secret=secret())
    host, client = await peer(creds), await peer(creds)
    client[1].write(b"x")
    assert await host[0].readexactly(1) == b"x"
    return host, client


async def closed_by_relay(stream: Stream, timeout: float = 10.0) -> bool:
    try:
        return await asyncio.wait_for(stream[0].read(1), timeout) == b""
    except ConnectionResetError:
        return True


async def legit_pair(lst: PeerListener) -> None:
    """Host and client present the same key from 127.0.0.1 and bytes flow both ways."""
    key = lst.keys.pop()  # type: ignore[attr-defined]
    creds = router_common_pb2.RelayCredentials(host="127.0.0.1", port=port(lst), key=key.to_proto(),
                                               secret=secret())
    host, client = await peer(creds), await peer(creds)
    client[1].write(b"ping")
    assert await asyncio.wait_for(host[0].readexactly(4), 10) == b"ping"
    host[1].write(b"pong")
    assert await asyncio.wait_for(client[0].readexactly(4), 10) == b"pong"
    for _, writer in (host, client):
        writer.close()


def drained(lst: PeerListener) -> bool:
    return (lst.admission.connections, lst.guard.pending, len(lst.pairing), len(lst.sessions)) == (0, 0, 0, 0)


def test_one_source_flood_is_capped_and_a_pair_still_forms() -> None:
    async def main() -> None:
        guard = FloodLimits(max_pending_per_source=4, connections_per_minute=30)
        async with listener(guard=guard) as lst:
            flood = [await connect(lst, "127.0.0.2") for _ in range(100)]
            await _until(lambda: lst.accepted == 100)
            assert lst.guard.pending_from("127.0.0.2") == 4
            assert lst.refusals["pending_per_ip"] == 26 and lst.refusals["rate_per_ip"] == 70
            assert lst.refused == 96
            await legit_pair(lst)
            for _, writer in flood:
                writer.close()
            await _until(lambda: drained(lst))
    _run(main)


def test_silent_connections_are_closed_after_the_first_message_deadline() -> None:
    async def main() -> None:
        async with listener(guard=FloodLimits(first_message_timeout=0.3)) as lst:
            started = asyncio.get_running_loop().time()
            silent = await connect(lst, "127.0.0.3")
            assert await closed_by_relay(silent)
            assert asyncio.get_running_loop().time() - started >= 0.25
            assert lst.guard_closes == {"first_message_timeout": 1}
            silent[1].close()
            await _until(lambda: drained(lst))
    _run(main)


def test_many_sources_cannot_hold_every_pending_slot() -> None:
    async def main() -> None:
        async with listener(guard=FloodLimits(max_pending=5, connections_per_minute=0)) as lst:
            flood = [await connect(lst, f"127.0.1.{i}") for i in range(2, 42)]
            await _until(lambda: lst.accepted == 40)
            assert lst.guard.pending == 5 and lst.guard_closes["evicted"] == 35
            await legit_pair(lst)
            for _, writer in flood:
                writer.close()
            await _until(lambda: drained(lst))
    _run(main)


def test_too_many_bytes_before_the_peer_to_relay_closes() -> None:
    async def main() -> None:
        async with listener(max_bytes_before_auth=1024) as lst:
            big = await connect(lst)
            big[1].write(struct.pack(">I", 1021))  # 4 + 1021 > 1024: refused on the length alone
            assert await closed_by_relay(big)
            ok = await connect(lst)
            ok[1].write(struct.pack(">I", 1020) + b"\x00" * 100)  # fits: still waiting for the rest
            await asyncio.sleep(0.2)
            assert lst.guard.pending == 1
            assert lst.guard_closes == {"too_big_before_auth": 1}
            for stream in (big, ok):
                stream[1].close()
            await _until(lambda: drained(lst))
    _run(main)


def test_sessions_end_at_their_maximum_lifetime() -> None:
    async def main() -> None:
        async with listener(max_session=0.5) as lst:
            host, client = await paired(lst)
            assert await closed_by_relay(host) and await closed_by_relay(client)
            assert lst.guard_closes == {"session_lifetime": 1}
            for stream in (host, client):
                stream[1].close()
            await _until(lambda: drained(lst))
    _run(main)


def test_connection_caps_total_and_per_source() -> None:
    async def main() -> None:
        async with listener(limits=connection_limits(5, 2)) as lst:
            held = [await connect(lst, "127.0.0.4") for _ in range(3)]
            held += [await connect(lst, f"127.0.0.{i}") for i in range(5, 10)]
            await _until(lambda: lst.accepted == 8)
            assert lst.refusals == {"connections_per_ip": 1, "connections_total": 2}
            assert lst.admission.connections == 5
            for stream in held:
                stream[1].close()
            await _until(lambda: drained(lst))
    _run(main)


def test_many_real_sessions_from_one_address_are_not_rate_limited() -> None:
    """A NAT address opening many sessions: connections with a valid key get their token back."""
    async def main() -> None:
        async with listener(guard=FloodLimits(connections_per_minute=4)) as lst:
            lst.pool.max_peer_count = 10
            for _ in range(8):  # 16 connections from 127.0.0.1, four times the per-minute rate
                await legit_pair(lst)
                await _until(lambda: not lst.sessions)
                lst.keys.extend(lst.pool.session_ended())  # type: ignore[attr-defined]
            assert lst.refused == 0
            await _until(lambda: drained(lst))
    _run(main)


def test_max_peer_count_caps_keyed_connections_not_the_flood() -> None:
    async def main() -> None:
        async with listener() as lst:
            lst.pool.max_peer_count = 1
            silent = [await connect(lst, "127.0.0.5") for _ in range(3)]  # unkeyed: the guard's business
            await _until(lambda: lst.accepted == 3)
            assert lst.refused == 0
            key = lst.keys.pop()  # type: ignore[attr-defined]
            creds = router_common_pb2.RelayCredentials(host="127.0.0.1", port=port(lst),
                                                       key=key.to_proto(), secret=secret())
            host, client = await peer(creds), await peer(creds)
            await _until(lambda: len(lst.sessions) == 1)
            late = await connect(lst)
            assert await closed_by_relay(late)
            assert lst.refusals == {"peer_count": 1}
            for stream in (*silent, host, client, late):
                stream[1].close()
            await _until(lambda: drained(lst))
    _run(main)


def test_refusals_are_logged_at_debug_with_the_address_and_throttled(
        caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        async with listener(guard=FloodLimits(max_pending_per_source=1, connections_per_minute=0)) as lst:
            flood = [await connect(lst, "127.0.0.6") for _ in range(200)]
            await _until(lambda: lst.accepted == 200)
            assert lst.refusals == {"pending_per_ip": 199}
            for stream in flood:
                stream[1].close()
            await _until(lambda: drained(lst))
    with caplog.at_level(logging.DEBUG, logger="natrelay.aspia.relay"):
        _run(main)
    refused = [r for r in caplog.records if "refused: pending_per_ip" in r.getMessage()]
    assert refused and all(r.levelno == logging.DEBUG and "127.0.0.6:" in r.getMessage() for r in refused)
    assert len(refused) <= 40  # 10 a second, however many connections


def test_a_session_that_ends_early_leaves_no_lifetime_deadline() -> None:
    async def main() -> None:
        async with listener(max_session=30.0) as lst:
            host, client = await paired(lst)
            deadline = lst.forwarding.next_deadline()
            assert deadline is not None and deadline > asyncio.get_running_loop().time() + 20
            for stream in (host, client):
                stream[1].close()
            await _until(lambda: drained(lst))
            assert lst.forwarding.next_deadline() is None  # the relay's timer is not woken for it
            assert lst.guard_closes == {}
    _run(main)
