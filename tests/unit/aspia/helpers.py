"""Shared fixtures for the Aspia core tests: deterministic randomness, accounts, a handshake pump."""

from __future__ import annotations

import random
from collections.abc import Callable

from natrelay.aspia import srp
from natrelay.aspia.crypto import RandomBytes, X25519KeyPair
from natrelay.aspia.handshake_client import ClientHandshake
from natrelay.aspia.handshake_server import ServerHandshake, UserRecord

SERVER_PRIVATE = bytes(range(0x61, 0x81))
SERVER_PUBLIC = X25519KeyPair.from_private_bytes(SERVER_PRIVATE).public_bytes
SEED = bytes(range(0x80, 0xC0))


def seeded_random(seed: int) -> RandomBytes:
    """Deterministic full-strength randomness."""
    return random.Random(seed).randbytes


def cheap_random(seed: int) -> RandomBytes:
    """Deterministic randomness whose SRP secrets a/b are only 64 bits long.

    Python's ``pow`` time grows with the exponent, and a 4096-bit handshake with 1024-bit
    secrets costs ~0.3 s; the maths is identical with short exponents, so tests that are not
    about the secrets themselves use this to keep the suite fast.
    """
    rng = random.Random(seed)

    def draw(n: int) -> bytes:
        if n == srp.SECRET_SIZE:
            return bytes(n - 8) + rng.randbytes(8)
        return rng.randbytes(n)

    return draw


def scripted(*chunks: bytes) -> RandomBytes:
    """Hands out exactly these chunks in order, checking each request's size."""
    queue = list(chunks)

    def draw(n: int) -> bytes:
        chunk = queue.pop(0)
        assert len(chunk) == n, f"asked for {n} random bytes, script has {len(chunk)}"
        return chunk

    return draw


def make_user(
    name: str,
    password: bytes,
    sessions: int,
    *,
    group: str = "4096",
    salt: bytes = bytes(range(1, 65)),
    flags: int = 1,
) -> UserRecord:
    verifier = srp.make_verifier(srp.GROUPS[group], salt, name, password)
    return UserRecord(name, group, salt, verifier, sessions, flags)


def lookup(*users: UserRecord) -> Callable[[str], UserRecord | None]:
    table = {user.name: user for user in users}
    return table.get


def pump(server: ServerHandshake, client: ClientHandshake, now: float = 1.0) -> list[tuple[str, bytes]]:
    """Run both sides against each other; return the transcript as (sender, payload) pairs.

    Messages are delivered one at a time in send order, which is also how back-to-back frames
    from a single TCP read reach a state machine.
    """
    transcript: list[tuple[str, bytes]] = []
    pending = [("client", m) for m in client.start()]
    while pending:
        sender, payload = pending.pop(0)
        transcript.append((sender, payload))
        if sender == "client":
            pending += [("server", m) for m in server.receive(payload, now)]
        else:
            pending += [("client", m) for m in client.receive(payload, now)]
    return transcript
