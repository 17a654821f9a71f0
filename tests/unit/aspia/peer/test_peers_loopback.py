"""Host and Client over real sockets on 127.0.0.1, against in-process router and relay stand-ins.

Covers the peers' whole path (router login, host ID, offer, PeerToRelay, end-to-end SRP, the
stream with half-close) and each client-side failure's message, without the router and relay
programs (those meet the peers in tests/e2e/test_aspia_peers.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

from natrelay.aspia.peer.client import AspiaClient, ClientSettings
from natrelay.aspia.peer.host import AspiaHost, HostSettings
from natrelay.aspia.peer.relay_link import PeerError
from natrelay.aspia.peer.state import load_state
from natrelay.aspia.peer.users import Credentials, HostUsers
from tests.unit.aspia.helpers import cheap_random
from tests.unit.aspia.peer.standins import HOST, ROUTER_KEY, StandInRelay, StandInRouter

pytestmark = pytest.mark.timeout(60)

FAST = cheap_random(1)
HOST_USER = Credentials("bob", b"host-secret")
ROUTER_USER = Credentials("alice", b"router-secret")


async def echo_service() -> tuple[asyncio.Server, list[bytes]]:
    """Echoes everything; after the client's end of input it sends b'<EOF seen>' and closes."""
    received: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            received.append(data)
            writer.write(data)
            await writer.drain()
        writer.write(b"<EOF seen>")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, HOST, 0)
    return server, received


@dataclass
class World:
    router: StandInRouter
    relay: StandInRelay
    host: AspiaHost
    ids: list[int]
    received: list[bytes]
    router_port: int

    def client(self, **changes: object) -> AspiaClient:
        settings = ClientSettings(router=(HOST, self.router_port), router_key=ROUTER_KEY, account=ROUTER_USER,
                                  host_id=self.ids[-1] if self.ids else 1, host_account=HOST_USER,
                                  connect_timeout=5, random_bytes=FAST)
        return AspiaClient(replace(settings, **changes))  # type: ignore[arg-type]


@asynccontextmanager
async def world(tmp_path: Path, *, relay: bool = True,
                router_key: bytes = ROUTER_KEY) -> AsyncIterator[World]:
    stand_relay = StandInRelay()
    await stand_relay.start()
    router = StandInRouter(stand_relay if relay else None)
    await router.start()
    service, received = await echo_service()
    ids: list[int] = []
    settings = HostSettings(router=(HOST, router.port), router_key=router_key,
                            expose=(HOST, service.sockets[0].getsockname()[1]),
                            state_path=tmp_path / "state.json", retry_interval=0.2, connect_timeout=5,
                            random_bytes=FAST)
    host = AspiaHost(settings, HostUsers([HOST_USER]), on_host_id=ids.append)
    stop = asyncio.Event()
    task = asyncio.ensure_future(host.run(stop))
    try:
        yield World(router, stand_relay, host, ids, received, router.port)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
        service.close()
        await router.close()
        await stand_relay.close()


async def until(predicate: Callable[[], bool], what: str, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 50))  # type: ignore[arg-type]


def test_host_registers_and_client_streams_with_half_close(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            await until(lambda: bool(w.ids), "a host ID")
            assert w.ids == [1]
            state = load_state(tmp_path / "state.json")
            assert state.host_id == 1 and len(state.key) == 512
            assert (tmp_path / "state.json").stat().st_mode & 0o777 == 0o600
            client = w.client()
            reader, writer = await client.connect()
            payload = os.urandom(3 * 1024 * 1024 + 17)
            writer.write(payload)
            writer.write_eof()  # half-close: the service must see every byte, then end of input
            echoed = await reader.read()
            assert hashlib.sha256(echoed).digest() == hashlib.sha256(payload + b"<EOF seen>").digest()
            assert b"".join(w.received) == payload
            assert w.relay.paired == 1
            writer.close()
            client.close()

    run(scenario())


def test_host_keeps_its_id_across_reconnects(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            await until(lambda: bool(w.ids), "a host ID")
            for session in list(w.router.sessions):
                session.abort("router restart")
            await until(lambda: len(w.router.sessions) == 1 and bool(w.router.sessions[0].host_ids),
                        "the host to reconnect")
            assert w.router.sessions[0].host_ids == [1]
            assert len(w.router.host_keys) == 1  # it proved its key instead of asking for a new ID
            assert w.ids == [1]

    run(scenario())


def test_client_router_link_serves_many_connections_at_once(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            await until(lambda: bool(w.ids), "a host ID")
            client = w.client()

            async def one(i: int) -> bytes:
                reader, writer = await client.connect()
                writer.write(b"%d" % i)
                writer.write_eof()
                data = await reader.read()
                writer.close()
                return data

            results = await asyncio.gather(*(one(i) for i in range(5)))
            assert results == [b"%d<EOF seen>" % i for i in range(5)]
            assert w.relay.paired == 5
            assert len([s for s in w.router.sessions if not s.host_ids]) == 1  # one login for all
            client.close()

    run(scenario())


async def expect_error(client: AspiaClient, *fragments: str) -> None:
    with pytest.raises(PeerError) as info:
        await client.connect()
    client.close()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message


def test_client_errors_are_precise(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path) as w:
            await until(lambda: bool(w.ids), "a host ID")
            await expect_error(w.client(account=Credentials("alice", b"wrong")),
                               "wrong user name or password")
            await expect_error(w.client(router_key=bytes(32 * [7])), "--router-key does not match")
            await expect_error(w.client(host_id=99), "host ID 99", "PEER_NOT_FOUND")
            await expect_error(w.client(host_account=Credentials("bob", b"nope")), "wrong host user name")
            await expect_error(w.client(host_account=Credentials("eve", b"nope")), "wrong host user name")
            w.relay.refuse = True
            await expect_error(w.client(), "relay at", "refused")

    run(scenario())


def test_key_pool_empty_is_reported(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with world(tmp_path, relay=False) as w:
            await until(lambda: bool(w.ids), "a host ID")
            await expect_error(w.client(), "KEY_POOL_EMPTY")

    run(scenario())


def test_host_with_wrong_router_key_stops_with_a_clear_error(tmp_path: Path,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        router = StandInRouter(None)
        await router.start()
        settings = HostSettings(router=(HOST, router.port), router_key=bytes(32 * [9]), expose=(HOST, 9),
                                state_path=tmp_path / "state.json", retry_interval=0.1, connect_timeout=5)
        host = AspiaHost(settings, HostUsers([HOST_USER]))
        code = await asyncio.wait_for(host.run(asyncio.Event()), 10)
        await router.close()
        assert code == 1
        assert "does not hold the private key for --router-key" in caplog.text

    run(scenario())
