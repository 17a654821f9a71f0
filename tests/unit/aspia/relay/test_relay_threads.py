"""The relay forwarding on two threads: pairing and keys on the main loop, bytes on the workers.

The listener is driven directly (keys straight from its pool) where the test needs to see the
workers; the router-driven cases go through ``serve_relay`` and the in-test router stand-in.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from natrelay.aspia.proto import router_common_pb2
from natrelay.aspia.relay.app import WORKERS_ENV, RelayTimers, default_workers, serve_relay, workers_from_env
from natrelay.aspia.relay.keypool import KeyPool, PoolKey
from natrelay.aspia.relay.listener_config import PeerListenerConfig
from natrelay.aspia.relay.server import PeerListener
from natrelay.engine.threads import ThreadedSession
from natrelay.ops.aspia_config import RelayConfig
from tests.unit.aspia.helpers import SERVER_PUBLIC
from tests.unit.aspia.relay.standin import StandInRouter, pair, peer, secret
from tests.unit.aspia.relay.test_relay_service import _free_port

Peer = tuple[asyncio.StreamReader, asyncio.StreamWriter]


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 60))


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def _until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


class Rig:
    """A started listener with two forwarding threads and a pool of ``capacity`` keys."""

    def __init__(self, capacity: int, idle: float = 60.0) -> None:
        self.pool = KeyPool(capacity)
        self.keys = self.pool.on_connected()
        self.announced: list[tuple[list[int], int]] = []  # (key ids, thread ident)
        self.listener = PeerListener(self.pool, PeerListenerConfig("127.0.0.1", 0, idle, workers=2),
                                     on_keys=self._on_keys)
        self.host, self.port = self.listener.start()

    def _on_keys(self, keys: list[PoolKey]) -> None:
        self.announced.append(([k.key_id for k in keys], threading.get_ident()))
        self.keys.extend(keys)

    async def pair(self) -> tuple[Peer, Peer]:
        key = self.keys.pop()
        creds = router_common_pb2.RelayCredentials(host=self.host, port=self.port, key=key.to_proto(),
                                                   secret=secret())
        return await peer(creds), await peer(creds)


@contextlib.asynccontextmanager
async def rig(capacity: int, idle: float = 60.0) -> AsyncIterator[Rig]:
    r = Rig(capacity, idle)
    try:
        yield r
    finally:
        r.listener.close()


async def _exchange(host: Peer, client: Peer, size: int = 100_000) -> None:
    data = os.urandom(size)
    client[1].write(data)
    assert await asyncio.wait_for(host[0].readexactly(size), 5) == data
    host[1].write(b"pong")
    assert await asyncio.wait_for(client[0].readexactly(4), 5) == b"pong"


def test_sessions_spread_over_the_workers_and_statistics_read_their_counters() -> None:
    async def main() -> None:
        async with rig(6) as r:
            pairs = [await r.pair() for _ in range(4)]
            await _until(lambda: len(r.listener.sessions) == 4)
            threads = r.listener.threads
            assert threads is not None and r.listener.engine is None
            assert threads.load() == [2, 2]
            forwards = [s.forward for s in r.listener.sessions.values()]
            assert all(isinstance(f, ThreadedSession) for f in forwards)
            assert sorted(f.worker for f in forwards if isinstance(f, ThreadedSession)) == [0, 0, 1, 1]
            for host, client in pairs:
                await _exchange(host, client)
            await _until(lambda: all(s.bytes_transferred == 100_004 for s in r.listener.snapshots()))
            assert sorted(s.session_id for s in r.listener.snapshots()) == [1, 2, 3, 4]
            for host, client in pairs:
                host[1].close()
                client[1].close()
            await _until(lambda: not r.listener.sessions)
            assert threads.load() == [0, 0]

    _run(main)


def test_a_session_ending_on_a_worker_returns_its_key_on_the_main_loop() -> None:
    async def main() -> None:
        async with rig(2) as r:
            main_thread = threading.get_ident()
            (host, client) = await r.pair()
            await _exchange(host, client)
            assert r.pool.active == 1 and len(r.pool) == 1
            client[1].close()
            host[1].close()
            await _until(lambda: bool(r.announced))
            ((ids, thread),) = r.announced
            assert thread == main_thread and len(ids) == 1
            assert r.pool.active == 0 and len(r.pool) == 2  # the slot came back as one new key
            assert not r.listener.sessions
            # The replacement key pairs like any other.
            (host2, client2) = await r.pair()
            await _exchange(host2, client2)
            for w in (host2[1], client2[1]):
                w.close()

    _run(main)


def test_no_descriptor_leaks_after_200_sessions() -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        before = _open_fds()
        async with rig(20) as r:
            threads = r.listener.threads
            assert threads is not None
            running = _open_fds()  # the listener and two loops' own descriptors
            for _ in range(10):
                pairs = [await r.pair() for _ in range(20)]
                for host, client in pairs:
                    await _exchange(host, client, 10)
                for host, client in pairs:
                    host[1].close()
                    client[1].close()
                    await host[1].wait_closed()
                    await client[1].wait_closed()
                await _until(lambda: not r.listener.sessions and r.pool.active == 0)
            assert threads.load() == [0, 0]
            engines = threads.engines()
            assert sum(e.totals.closed for e in engines) == 200
            assert len(r.announced) == 200
            await asyncio.sleep(0.05)
            # Only the pools' spare pipes (two descriptors each) stay open between sessions.
            assert _open_fds() == running + 2 * sum(e.pool.spare for e in engines)
        assert _open_fds() == before

    _run(main)


def test_closing_the_listener_closes_sessions_and_stops_the_threads() -> None:
    async def main() -> None:
        r = Rig(4)
        pairs = [await r.pair() for _ in range(3)]
        await _until(lambda: len(r.listener.sessions) == 3)
        r.listener.close()
        assert not r.listener.sessions and r.pool.active == 0
        assert not any(t.name.startswith("natrelay-forward-") for t in threading.enumerate())
        for host, client in pairs:
            assert await asyncio.wait_for(host[0].read(), 5) == b""
            assert await asyncio.wait_for(client[0].read(), 5) == b""
            host[1].close()
            client[1].close()

    _run(main)


# ------------------------------------------------------------- through the router link
@contextlib.asynccontextmanager
async def relay(router: StandInRouter, timers: RelayTimers) -> AsyncIterator[None]:
    config = RelayConfig(router_address="127.0.0.1", router_port=router.port, router_public_key=SERVER_PUBLIC,
                         listen_interface="127.0.0.1", peer_address="127.0.0.1", peer_port=_free_port(),
                         max_peer_count=4)
    stop = asyncio.Event()
    task = asyncio.create_task(serve_relay(config, stop, source="test-relay.json", timers=timers, workers=2))
    try:
        yield
    finally:
        stop.set()
        assert await asyncio.wait_for(task, 5) == 0


def test_router_disconnect_reaches_a_session_on_a_worker() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router, RelayTimers(reconnect=0.2, key_expiry=5, pending=5, idle=60)):
            link = await router.next_link()
            await link.next_message("key_pool")
            sessions = [await pair(link) for _ in range(2)]  # one per worker
            for host, client in sessions:
                await _exchange(host, client, 10)
            link.disconnect_session(2)
            (h2, c2) = sessions[1]
            assert await asyncio.wait_for(h2[0].read(), 5) == b""
            assert await asyncio.wait_for(c2[0].read(), 5) == b""
            assert len((await link.next_message("key_pool")).key_pool.key) == 1
            await _exchange(*sessions[0], 10)  # the other session is untouched
            for host, client in sessions:
                host[1].close()
                client[1].close()
        await router.stop()

    _run(main)


def test_idle_timeout_on_a_worker_returns_the_key() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router, RelayTimers(reconnect=0.2, key_expiry=5, pending=5, idle=0.6)):
            link = await router.next_link()
            await link.next_message("key_pool")
            sessions = [await pair(link) for _ in range(2)]
            loop = asyncio.get_running_loop()
            for _ in range(3):  # traffic keeps both alive past the idle limit
                await asyncio.sleep(0.3)
                for host, client in sessions:
                    await _exchange(host, client, 1)
            quiet_since = loop.time()
            for host, client in sessions:
                assert await asyncio.wait_for(host[0].read(), 5) == b""
                assert await asyncio.wait_for(client[0].read(), 5) == b""
            assert loop.time() - quiet_since >= 0.55
            ids: list[int] = []
            while len(ids) < 2:
                ids += [k.key_id for k in (await link.next_message("key_pool")).key_pool.key]
            assert len(set(ids)) == 2
            for host, client in sessions:
                host[1].close()
                client[1].close()
        await router.stop()

    _run(main)


@pytest.mark.parametrize(("text", "expected"), [("", 0), ("0", 0), (" 3 ", 3)])
def test_worker_count_from_the_environment(text: str, expected: int) -> None:
    # Unset means the main loop: threads are opt-in (see default_workers for the figures).
    assert workers_from_env({WORKERS_ENV: text}) == expected
    assert workers_from_env({}) == default_workers() == 0


@pytest.mark.parametrize("text", ["two", "-1", "100000", "1.5"])
def test_bad_worker_count_is_refused_naming_the_variable(text: str) -> None:
    with pytest.raises(ValueError, match=WORKERS_ENV):
        workers_from_env({WORKERS_ENV: text})


def test_serve_relay_refuses_a_bad_worker_count(monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv(WORKERS_ENV, "many")
    config = RelayConfig(router_address="127.0.0.1", router_port=_free_port(),
                         router_public_key=SERVER_PUBLIC, listen_interface="127.0.0.1",
                         peer_address="127.0.0.1", peer_port=_free_port())

    async def main() -> None:
        assert await serve_relay(config, asyncio.Event()) == 1

    _run(main)
    assert any(WORKERS_ENV in r.getMessage() for r in caplog.records)
