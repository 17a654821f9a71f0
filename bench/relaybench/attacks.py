"""The hostile connections of ``hostile.py``: one catalogue of attacks per server, and the runner.

An attack is a coroutine given a fresh connection; :func:`one` makes that connection from a given
source address and reduces the server's answer to a word (closed, reset, still open, held, connect
failed), and :func:`run_attacks` makes thousands of them over many source addresses. Kept apart
from the harness (``hostile.py``: the legitimate transfer, the router's request flood, the report)
so that what is sent can be read in one place, server by server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import time
from collections import Counter
from collections.abc import Awaitable, Callable

from relaybench.flood_targets import source_address

Attack = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
VERDICT_WAIT = 25.0
"""Seconds an attack waits for the server to close it (the router's AuthTimeout is 20 s)."""


async def _read_some(reader: asyncio.StreamReader) -> bytes:
    data = await asyncio.wait_for(reader.read(65536), 15)
    if not data:
        raise EOFError
    return data


def offset_attacks(relay_key: bytes, hold: float, port: int) -> dict[str, Attack]:
    """strelay's attacks; ``port`` is the relay's, where the replayed handshake is first recorded."""
    from natrelay.offset.crypto import Identity
    from natrelay.offset.framing import VERSION_FRAME, FrameDecoder, encode_frame, frame_header
    from natrelay.offset.link import Link
    from natrelay.offset.messages import (
        ExchangeDh,
        ExchangeRandNonce,
        Listen,
        decode_exchange_rand_nonce,
        encode_exchange_dh,
        encode_exchange_rand_nonce,
        encode_init_connection,
    )

    async def handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Link:
        link = Link(Identity.generate(), now=time.monotonic(), expected_remote=relay_key)
        writer.writelines(link.take_output())
        while not link.established:
            link.receive_data(await _read_some(reader), time.monotonic())
            writer.writelines(link.take_output())
        return link

    async def replayable() -> bytes:
        """The bytes a real client sent in a complete handshake, recorded once."""
        sent = bytearray()
        link = Link(Identity.generate(), now=time.monotonic(), expected_remote=relay_key)
        reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.9.1", 0))
        try:
            for chunk in link.take_output():
                sent += chunk
                writer.write(chunk)
            while not link.established:
                link.receive_data(await _read_some(reader), time.monotonic())
                for chunk in link.take_output():
                    sent += chunk
                    writer.write(chunk)
        finally:
            writer.close()
        return bytes(sent)

    recorded: list[bytes] = []
    once = asyncio.Lock()

    async def replayed(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with once:  # one recording, however many replays start at once
            if not recorded:
                recorded.append(await replayable())
        writer.write(recorded[0])

    async def bad_signature(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hello = ExchangeRandNonce(rand_nonce=os.urandom(16), src_public_key=Identity.generate().public_key,
                                  opt_dest_public_key=None)
        writer.write(VERSION_FRAME + encode_frame(encode_exchange_rand_nonce(hello)))
        decoder, frames = FrameDecoder(), list[bytes]()
        while len(frames) < 2:
            frames += decoder.feed(await _read_some(reader))
        theirs = decode_exchange_rand_nonce(frames[1])
        writer.write(encode_frame(encode_exchange_dh(ExchangeDh(
            dh_public_key=os.urandom(32), rand_nonce=theirs.rand_nonce, key_salt=os.urandom(32),
            signature=os.urandom(64)))))

    async def short_ciphertext(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await handshake(reader, writer)
        writer.write(frame_header(5) + b"\x01\x02\x03\x04\x05")

    async def listen_random_key(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link = await handshake(reader, writer)
        link.send(encode_init_connection(Listen()))
        writer.writelines(link.take_output())
        # Held for a while (the relay answers nothing to a Listen); its closing early is a refusal.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(hold):
                while await reader.read(65536):
                    pass
                raise EOFError
        raise Held

    return {
        "garbage": send(lambda: os.urandom(4096)),
        "huge_length": send(lambda: VERSION_FRAME + struct.pack(">Q", 1 << 40) + b"x" * 1000),
        "wrong_version": send(lambda: encode_frame(b"\x00\x00\x00\x01")),
        "truncated_frame": send(lambda: VERSION_FRAME + frame_header(1000) + b"x" * 100, eof=True),
        "bad_signature": bad_signature,
        "replayed_handshake": replayed,
        "short_ciphertext": short_ciphertext,
        "listen_random_key": listen_random_key,
    }


def relay_attacks(replay: bytes) -> dict[str, Attack]:
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    from natrelay.aspia.messages import build_peer_to_relay
    from natrelay.aspia.proto import router_common_pb2

    def forged() -> bytes:
        public = X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        key = router_common_pb2.RelayKey(
            type=router_common_pb2.RelayKey.TYPE_X25519,
            encryption=router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305,
            public_key=public, iv=os.urandom(12), key_id=int.from_bytes(os.urandom(4), "big"))
        creds = router_common_pb2.RelayCredentials(key=key, secret=os.urandom(64))
        return build_peer_to_relay(creds)

    return {
        "garbage": send(lambda: os.urandom(4096)),
        "huge_length": send(lambda: struct.pack(">I", 0xFFFFFFFF) + b"x" * 1000),
        "truncated_frame": send(lambda: struct.pack(">I", 200) + b"x" * 100, eof=True),
        "malformed_message": send(lambda: struct.pack(">I", 64) + os.urandom(64)),
        "forged_key": send(forged),
        "replayed_peer_to_relay": send(lambda: replay),
    }


def router_attacks(router_key: bytes, replay: bytes) -> dict[str, Attack]:
    from natrelay.aspia.channel import Channel
    from natrelay.aspia.framing import encode_user_frame
    from natrelay.aspia.handshake import Identify
    from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
    from natrelay.aspia.messages import ASPIA_VERSION, serialize
    from natrelay.aspia.proto import key_exchange_pb2

    async def short_ciphertext(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        config = ClientConfig(session_type=4, identify=Identify.ANONYMOUS, server_public_key=router_key)
        channel = Channel(ClientHandshake(config, time.monotonic()), now=time.monotonic())
        writer.writelines(channel.take_output())
        while not channel.established:
            channel.receive_data(await _read_some(reader), time.monotonic())
            writer.writelines(channel.take_output())
        writer.write(encode_user_frame(b"\x01\x02\x03"))

    def no_cipher() -> bytes:
        hello = key_exchange_pb2.ClientHello(encryption=0, version=ASPIA_VERSION.to_proto())
        return encode_user_frame(serialize(hello))

    return {
        "garbage": send(lambda: os.urandom(4096)),
        "huge_length": send(lambda: b"\xff\xff\xff\xff\x0f" + b"x" * 1000),
        "truncated_frame": send(lambda: encode_user_frame(b"x" * 300)[:100], eof=True),
        "wrong_version_or_cipher": send(no_cipher),
        "short_ciphertext": short_ciphertext,
        "replayed_handshake": send(lambda: replay),
    }


class Held(Exception):
    """A connection the server kept (a Listen registration it accepted)."""


def send(make: Callable[[], bytes], eof: bool = False) -> Attack:
    async def attack(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(make())
        if eof:
            writer.write_eof()
    return attack


async def one(attack: Attack, source: str, port: int) -> str:
    """Make one hostile connection from ``source`` and say how the server answered it."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0)), 15)
    except ConnectionError as exc:  # reset by a server that refused it at once (asyncio saw it first)
        return f"reset at connect ({type(exc).__name__})"
    except (OSError, TimeoutError) as exc:
        return f"connect failed ({type(exc).__name__})"
    try:
        await attack(reader, writer)
        async with asyncio.timeout(VERDICT_WAIT):
            while await reader.read(65536):
                pass
        return "closed"
    except Held:
        return "held (accepted)"
    except TimeoutError:
        return "still open"
    except ConnectionResetError:
        return "reset"
    except (EOFError, asyncio.IncompleteReadError, OSError):
        return "closed"
    except Exception as exc:  # an attack's own parsing of a refusal: still the server's answer
        return f"closed ({type(exc).__name__})"
    finally:
        writer.close()


async def run_attacks(attacks: dict[str, Attack], port: int, count: int, addresses: int,
                      parallel: int, at_once: dict[str, int] | None = None,
                      keep_going: Callable[[], bool] = lambda: False) -> dict[str, dict[str, int]]:
    """``count`` connections per attack, ``parallel`` at a time, sources rotating over ``addresses``.

    An attack named in ``at_once`` instead makes that many connections all together (Listen
    registrations: only registrations held at the same time test the listener caps), from
    addresses of their own (127.3.x.y) so that they do not use up the other attacks' per-address
    handshake slots."""
    at_once = at_once or {}
    gate = asyncio.Semaphore(parallel)
    results: dict[str, Counter[str]] = {name: Counter() for name in attacks}
    n = 0

    async def run(name: str, attack: Attack, source: str, gate: asyncio.Semaphore | None) -> None:
        async with gate or contextlib.nullcontext():
            results[name][await one(attack, source, port)] += 1

    tasks = []
    for name, many in at_once.items():
        for i in range(many):
            k = i % addresses  # an address block of their own: 127.3.x.y
            tasks.append(run(name, attacks[name], f"127.3.{k // 250}.{k % 250 + 1}", None))
    for _ in range(count):
        for name, attack in attacks.items():
            if name not in at_once:
                tasks.append(run(name, attack, source_address(n % addresses), gate))
                n += 1
    await asyncio.gather(*tasks)
    while keep_going():  # more rounds while the legitimate transfer still runs
        await asyncio.gather(*(run(name, attack, source_address((n := n + 1) % addresses), gate)
                               for name, attack in attacks.items() if name not in at_once))
    return {name: dict(c) for name, c in results.items()}
