"""Backpressure through a real strelay: a stalled receiver stalls the sender, not the relay's memory."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.offset.client import OffsetClient
from natrelay.offset.crypto import Identity
from natrelay.offset.files import read_ticket
from tests.e2e.offset_env import Relay, start_relay

CHUNK = 1024 * 1024


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    r = start_relay(tmp_path / "relay")
    yield r
    assert r.stop() == 0, r.log()


def test_stalled_receiver_bounds_relay_memory_and_loses_nothing(relay: Relay) -> None:
    ticket = read_ticket(relay.ticket)
    a, b = Identity.generate(), Identity.generate()

    async def scenario() -> None:
        receiver = OffsetClient(b, ticket)
        sender = OffsetClient(a, ticket)
        got: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = asyncio.Queue()
        release = asyncio.Event()

        async def on_tunnel(key: bytes, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await got.put((r, w))
            await release.wait()  # the listener keeps the tunnel open while the test reads it

        listener = receiver.listener(on_tunnel)
        listening = asyncio.create_task(listener.run())
        try:
            await asyncio.wait_for(listener.connected.wait(), 20)
            _, writer = await sender.connect(b.public_key)
            r_in, w_in = await asyncio.wait_for(got.get(), 20)
            rss_before = relay.rss_kib()

            sent = hashlib.sha256()
            written = 0

            async def write_until_blocked() -> None:
                nonlocal written
                while True:  # nobody reads at the far end: drain() must eventually block
                    chunk = os.urandom(CHUNK)
                    writer.write(chunk)
                    sent.update(chunk)
                    written += len(chunk)
                    await writer.drain()
                    await asyncio.sleep(0)  # let the test's clock run even if drain() never blocks

            blocked = asyncio.create_task(write_until_blocked())
            await asyncio.sleep(4)
            assert not blocked.done()
            stalled_at = written
            await asyncio.sleep(2)
            assert written == stalled_at, "the sender kept going although nobody reads"
            # Buffers on the way (socket buffers, the relay's high-water marks, reader limits) are a
            # few MiB each; an unbounded relay would hold everything written.
            assert written < 96 * CHUNK, written
            assert relay.rss_kib() - rss_before < 48 * 1024, (rss_before, relay.rss_kib())

            # The receiver reads again: everything written arrives, in order, and the sender resumes.
            received = hashlib.sha256()
            total = 0

            async def drain_reader() -> None:
                nonlocal total
                while total < written + 4 * CHUNK:
                    data = await r_in.read(1 << 20)
                    if not data:
                        return
                    received.update(data)
                    total += len(data)

            draining = asyncio.create_task(drain_reader())
            await asyncio.sleep(1)
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked
            writer.write_eof()
            await asyncio.wait_for(draining, 60)
            assert total == written and received.digest() == sent.digest()
            w_in.close()
            writer.close()
        finally:
            release.set()
            listening.cancel()
            await listener.aclose()
            receiver.close()
            sender.close()

    asyncio.run(scenario())
