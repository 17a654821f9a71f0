"""The whole relay in one process against an in-test router stand-in, over real loopback sockets.

Protocol timers are shortened through :class:`RelayTimers`; nothing here waits out a default.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from natrelay.aspia.relay.app import RelayTimers, serve_relay
from natrelay.ops.aspia_config import RelayConfig
from tests.unit.aspia.helpers import SERVER_PUBLIC
from tests.unit.aspia.relay.standin import StandInRouter, credentials, pair, peer, secret

FAST = RelayTimers(reconnect=0.2, key_expiry=0.5, pending=1.0, handshake=5.0, idle=60.0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def relay(router: StandInRouter, *, timers: RelayTimers = FAST, **overrides: object
                ) -> AsyncIterator[asyncio.Task[int]]:
    values: dict[str, object] = dict(
        router_address="127.0.0.1", router_port=router.port, router_public_key=SERVER_PUBLIC,
        listen_interface="127.0.0.1", peer_address="127.0.0.1", peer_port=_free_port(), max_peer_count=4,
    )
    values.update(overrides)
    config = RelayConfig(**values)  # type: ignore[arg-type]
    stop = asyncio.Event()
    task = asyncio.create_task(serve_relay(config, stop, source="test-relay.json", timers=timers))
    try:
        yield task
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


def _run(main: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(main(), 30))


async def _eof(reader: asyncio.StreamReader, timeout: float = 5.0) -> bytes:
    return await asyncio.wait_for(reader.read(), timeout)


def test_registers_pairs_forwards_and_replaces_the_key_when_the_session_ends() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router):
            link = await router.next_link()
            first = await link.next_message("key_pool")
            assert len(first.key_pool.key) == 4 and first.key_pool.peer_host == "127.0.0.1"
            assert sorted(link.keys) == [0, 1, 2, 3]
            # The client's ClientHello often arrives with its PeerToRelay: it must reach the host first.
            (h_reader, h_writer), (c_reader, c_writer) = await pair(link, early_client=b"early bytes")
            assert await asyncio.wait_for(h_reader.readexactly(11), 5) == b"early bytes"
            c_writer.write(b"to host")
            h_writer.write(b"to client")
            assert await asyncio.wait_for(h_reader.readexactly(7), 5) == b"to host"
            assert await asyncio.wait_for(c_reader.readexactly(9), 5) == b"to client"
            big = bytes(range(256)) * 4096
            h_writer.write(big)
            assert await asyncio.wait_for(c_reader.readexactly(len(big)), 10) == big
            c_writer.close()
            h_writer.close()
            replacement = await link.next_message("key_pool")
            assert [k.key_id for k in replacement.key_pool.key] == [4]
            assert replacement.key_pool.peer_port == link.peer_address[1]
        await router.stop()

    _run(main)


def test_unpaired_used_key_expires_and_is_replaced() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router):
            link = await router.next_link()
            await link.next_message("key_pool")
            key = link.take_key()
            fresh = await link.next_message("key_pool", timeout=3)
            assert [k.key_id for k in fresh.key_pool.key] == [4]
            # The expired key no longer opens anything.
            reader, writer = await peer(credentials(link, key, secret()))
            assert await _eof(reader) == b""
            writer.close()
        await router.stop()

    _run(main)


def test_statistics_report_sessions_and_uptime() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router, statistics_enabled=True, statistics_interval=1):
            link = await router.next_link()
            await link.next_message("key_pool")
            (h_reader, h_writer), (_c_reader, c_writer) = await pair(link)
            c_writer.write(b"x" * 1000)
            await asyncio.wait_for(h_reader.readexactly(1000), 5)
            while True:
                stat = (await link.next_message("relay_stat", timeout=3)).relay_stat
                if stat.peer_connection:
                    break
            (entry,) = stat.peer_connection
            assert entry.session_id == 1 and entry.bytes_transferred == 1000
            assert entry.client_user_name == "alice" and entry.host_id == 7
            assert stat.uptime >= 1
            for w in (h_writer, c_writer):
                w.close()
        await router.stop()

    _run(main)


def test_router_disconnect_request_ends_the_session_and_frees_its_slot() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router):
            link = await router.next_link()
            await link.next_message("key_pool")
            (h_reader, h_writer), (c_reader, c_writer) = await pair(link)
            c_writer.write(b"hello")
            await asyncio.wait_for(h_reader.readexactly(5), 5)
            link.disconnect_session(1)
            assert await _eof(h_reader) == b"" and await _eof(c_reader) == b""
            assert len((await link.next_message("key_pool")).key_pool.key) == 1
            for w in (h_writer, c_writer):
                w.close()
        await router.stop()

    _run(main)


def test_idle_session_is_closed_from_its_last_byte_and_its_key_replaced() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        timers = RelayTimers(reconnect=0.2, key_expiry=5, pending=5, idle=0.6)
        async with relay(router, timers=timers):
            link = await router.next_link()
            await link.next_message("key_pool")
            (h_reader, h_writer), (_c_reader, c_writer) = await pair(link)
            loop = asyncio.get_running_loop()
            for _ in range(3):  # traffic keeps it alive past the idle limit
                await asyncio.sleep(0.3)
                c_writer.write(b"k")
                await asyncio.wait_for(h_reader.readexactly(1), 5)
            quiet_since = loop.time()
            assert await _eof(h_reader) == b""
            assert loop.time() - quiet_since >= 0.55
            assert len((await link.next_message("key_pool")).key_pool.key) == 1
            for w in (h_writer, c_writer):
                w.close()
        await router.stop()

    _run(main)


def test_router_loss_keeps_sessions_and_reregisters_with_the_remaining_capacity() -> None:
    async def main() -> None:
        router = StandInRouter()
        port = await router.start()
        async with relay(router):
            link = await router.next_link()
            await link.next_message("key_pool")
            (h_reader, h_writer), (c_reader, c_writer) = await pair(link)
            await router.stop()
            link.abort("router gone")
            await asyncio.sleep(0.5)  # more than one reconnect period with nobody listening
            c_writer.write(b"still here")
            assert await asyncio.wait_for(h_reader.readexactly(10), 5) == b"still here"
            router2 = StandInRouter()
            await router2.start(port)
            link2 = await router2.next_link()
            pool = (await link2.next_message("key_pool")).key_pool
            assert [k.key_id for k in pool.key] == [4, 5, 6]  # 4 - 1 active; ids continue
            h_writer.write(b"after")
            assert await asyncio.wait_for(c_reader.readexactly(5), 5) == b"after"
            for w in (h_writer, c_writer):
                w.close()
            await router2.stop()

    _run(main)


def test_wrong_router_key_is_logged_naming_the_field_and_file(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        caplog.set_level(logging.INFO, logger="natrelay.aspia.relay")
        async with relay(router, router_public_key=bytes(range(32))):
            for _ in range(100):
                if any("RouterPublicKey" in r.getMessage() for r in caplog.records):
                    break
                await asyncio.sleep(0.05)
        await router.stop()

    _run(main)
    lines = [r.getMessage() for r in caplog.records if "RouterPublicKey" in r.getMessage()]
    assert lines and "test-relay.json" in lines[0] and "does not match" in lines[0]


def test_unreachable_router_is_logged_with_the_retry(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        router = StandInRouter()
        router.port = _free_port()  # nobody listens there
        caplog.set_level(logging.INFO, logger="natrelay.aspia.relay")
        async with relay(router):
            await asyncio.sleep(0.5)

    _run(main)
    lines = [r.getMessage() for r in caplog.records if "cannot reach the router" in r.getMessage()]
    assert len(lines) >= 2 and "retrying in 0.2 s" in lines[0]


@pytest.mark.parametrize("garbage", [
    struct.pack(">I", 0),
    struct.pack(">I", 1024 * 1024 + 1),
    struct.pack(">I", 5) + b"\xff\xff\xff\xff\xff",
], ids=["zero-length", "oversized", "not-protobuf"])
def test_garbage_closes_only_that_connection(garbage: bytes) -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router):
            link = await router.next_link()
            await link.next_message("key_pool")
            (h_reader, h_writer), (_c_reader, c_writer) = await pair(link)
            reader, writer = await asyncio.open_connection(*link.peer_address)
            writer.write(garbage)
            assert await _eof(reader) == b""
            writer.close()
            c_writer.write(b"unaffected")
            assert await asyncio.wait_for(h_reader.readexactly(10), 5) == b"unaffected"
            for w in (h_writer, c_writer):
                w.close()
        await router.stop()

    _run(main)


def test_pending_peer_times_out_and_a_departed_one_frees_its_slot_at_once() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        async with relay(router, max_peer_count=1):
            link = await router.next_link()
            await link.next_message("key_pool")
            key = link.take_key()
            creds = credentials(link, key, secret())
            loop = asyncio.get_running_loop()
            start = loop.time()
            reader, writer = await peer(creds)
            assert await _eof(reader) == b""
            assert 0.9 <= loop.time() - start < 3.0
            writer.close()
            # MaxPeerCount 1 allows two connections; a third waits its turn by being refused.
            (_r1, w1), (_r2, w2) = [await asyncio.open_connection(*link.peer_address) for _ in range(2)]
            await asyncio.sleep(0.1)
            r3, w3 = await asyncio.open_connection(*link.peer_address)
            assert await _eof(r3) == b""
            w1.close()  # leaves before sending anything: its slot is free again
            await asyncio.sleep(0.2)
            r4, w4 = await asyncio.open_connection(*link.peer_address)
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r4.read(), 0.3)
            for w in (w2, w3, w4):
                w.close()
            await asyncio.sleep(0.2)
            # A peer that presented valid credentials and then gave up frees its slot too (§12 bug 17).
            key = link.take_key()
            reader, writer = await peer(credentials(link, key, secret()))
            await asyncio.sleep(0.1)
            writer.close()
            await asyncio.sleep(0.2)
            (_r5, w5), (r6, w6) = [await asyncio.open_connection(*link.peer_address) for _ in range(2)]
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(r6.read(), 0.3)
            for w in (w5, w6):
                w.close()
        await router.stop()

    _run(main)
