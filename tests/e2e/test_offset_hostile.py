"""Bad input costs nothing else: hostile clients against a real strelay during a legitimate transfer."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from natrelay.offset.client import OffsetClient
from natrelay.offset.crypto import Identity
from natrelay.offset.files import b64url_decode, read_identity_seed, read_ticket
from natrelay.offset.framing import VERSION_FRAME, FrameDecoder, encode_frame, frame_header
from natrelay.offset.link import Link
from natrelay.offset.messages import (
    ExchangeDh,
    ExchangeRandNonce,
    decode_exchange_rand_nonce,
    encode_exchange_dh,
    encode_exchange_rand_nonce,
)
from tests.e2e.offset_env import Relay, make_identity, peer, start_relay, wait_for, wait_listening

# Attackers come from loopback addresses of their own, so that per-IP limits apply to them: the silent
# ones fill 127.0.0.2's quota; the active ones come from 127.0.0.3 and must get as far as their attack.
SILENT_IP = "127.0.0.2"
ATTACKER_IP = "127.0.0.3"


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[Relay]:
    r = start_relay(tmp_path / "relay", "--max-per-ip", "256")
    yield r
    assert r.stop() == 0, r.log()


async def open_from(ip: str, port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port, local_addr=(ip, 0))


async def closed_by_relay(reader: asyncio.StreamReader, within: float) -> bool:
    """True when the relay ends the connection (EOF or reset) within ``within`` seconds."""
    try:
        async with asyncio.timeout(within):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return False
    except ConnectionError:
        return True
    return True


async def attack_garbage(port: int) -> bool:
    r, w = await open_from(ATTACKER_IP, port)
    w.write(os.urandom(4096))
    return await closed_by_relay(r, 7.0)


async def attack_oversized_length(port: int) -> bool:
    r, w = await open_from(ATTACKER_IP, port)
    w.write(VERSION_FRAME + struct.pack(">Q", 1 << 40) + b"x" * 1000)
    return await closed_by_relay(r, 7.0)


async def attack_wrong_version(port: int) -> bool:
    r, w = await open_from(ATTACKER_IP, port)
    w.write(encode_frame(b"\x00\x00\x00\x01"))
    return await closed_by_relay(r, 7.0)


async def attack_bad_signature(port: int) -> bool:
    r, w = await open_from(ATTACKER_IP, port)
    me = Identity.generate()
    hello = ExchangeRandNonce(rand_nonce=os.urandom(16), src_public_key=me.public_key,
                              opt_dest_public_key=None)
    w.write(VERSION_FRAME + encode_frame(encode_exchange_rand_nonce(hello)))
    decoder = FrameDecoder()
    frames: list[bytes] = []
    while len(frames) < 2:
        data = await asyncio.wait_for(r.read(65536), 7.0)
        assert data, "relay closed before its ExchangeRandNonce"
        frames += decoder.feed(data)
    theirs = decode_exchange_rand_nonce(frames[1])
    w.write(encode_frame(encode_exchange_dh(ExchangeDh(
        dh_public_key=os.urandom(32), rand_nonce=theirs.rand_nonce, key_salt=os.urandom(32),
        signature=os.urandom(64)))))
    return await closed_by_relay(r, 7.0)


async def attack_short_encrypted_frame(port: int, relay_key: bytes) -> bool:
    """Complete the handshake, then send a 5-byte frame (the original's panic, spec §12.2 item 3)."""
    r, w = await open_from(ATTACKER_IP, port)
    link = Link(Identity.generate(), now=time.monotonic(), expected_remote=relay_key)
    w.writelines(link.take_output())
    while not link.established:
        data = await asyncio.wait_for(r.read(65536), 7.0)
        assert data, "relay closed during a correct handshake"
        link.receive_data(data, time.monotonic())
        w.writelines(link.take_output())
    w.write(frame_header(5) + b"\x01\x02\x03\x04\x05")
    return await closed_by_relay(r, 7.0)


async def silent_connections(port: int, count: int) -> list[asyncio.StreamWriter]:
    writers = []
    for _ in range(count):
        try:
            _, w = await open_from(SILENT_IP, port)
        except OSError:
            continue
        writers.append(w)
    return writers


def test_hostile_clients_leave_a_transfer_and_the_relay_unharmed(relay: Relay, tmp_path: Path) -> None:
    b_ident, b_key = make_identity(tmp_path, "b")
    a_ident, _ = make_identity(tmp_path, "a")
    relay_key = read_ticket(relay.ticket).public_key

    async def scenario() -> None:
        async def echo(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
            w.close()

        echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
        echo_port = echo_server.sockets[0].getsockname()[1]
        exposer = peer("offset", "listen", "--idfile", str(b_ident), "--relay", str(relay.ticket),
                       "--allow-any", "--expose", f"127.0.0.1:{echo_port}")
        client = OffsetClient(Identity(read_identity_seed(a_ident)), read_ticket(relay.ticket))
        try:
            await asyncio.to_thread(wait_listening, relay, b_key)
            await asyncio.sleep(0.5)
            base_fds, base_rss = relay.fd_count(), relay.rss_kib()

            reader, writer = await client.connect(b64url_decode(b_key, length=32, what="key"))
            sent, received = hashlib.sha256(), hashlib.sha256()
            total = 0

            async def legit() -> None:
                nonlocal total
                for _ in range(40):  # ~20 MB, paced so that the attacks happen during the transfer
                    chunk = os.urandom(512 * 1024)
                    sent.update(chunk)
                    total += len(chunk)
                    writer.write(chunk)
                    await writer.drain()
                    await asyncio.sleep(0.05)
                writer.write_eof()

            async def drain() -> int:
                n = 0
                while data := await reader.read(1 << 20):
                    received.update(data)
                    n += len(data)
                return n

            silent = await silent_connections(relay.port, 500)
            results = await asyncio.gather(
                legit(), drain(), attack_garbage(relay.port), attack_oversized_length(relay.port),
                attack_wrong_version(relay.port), attack_bad_signature(relay.port),
                attack_short_encrypted_frame(relay.port, relay_key))
            assert results[1] == total and sent.digest() == received.digest()
            assert results[2:] == [True] * 5, results[2:]
            writer.close()
            for w in silent:
                w.close()
            log = relay.log()
            assert "per-IP concurrent handshake limit reached (8) for 127.0.0.2" in log
            assert "protocol error" in log
            await asyncio.to_thread(wait_for, lambda: relay.fd_count() <= base_fds, 30,
                                    "the relay's descriptors to return to their count before the attacks")
            # Memory: back near where it was (the allocator keeps some pages; 500 links are far more).
            assert relay.rss_kib() < base_rss + 32 * 1024, (base_rss, relay.rss_kib())
            # And the relay still serves: a fresh tunnel works.
            r2, w2 = await client.connect(b64url_decode(b_key, length=32, what="key"))
            w2.write(b"still here")
            w2.write_eof()
            assert await asyncio.wait_for(r2.read(-1), 30) == b"still here"
            w2.close()
        finally:
            client.close()
            exposer.terminate()
            exposer.wait(10)
            echo_server.close()

    asyncio.run(scenario())
