"""Helpers shared by the Offset channel/link tests and fuzzers: scripted randomness and pumps."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from natrelay.offset.channel import SecureChannel
from natrelay.offset.crypto import Identity
from natrelay.offset.link import Link

RFC8032_SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
RFC8032_PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
CLIENT_SEED = bytes(range(32))
CLIENT_PUBLIC = bytes.fromhex("03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8")
CLIENT_SEND_KEY = bytes.fromhex("dc97912f00ed9118b8e87c5dbda4d6f5ffe63c3e7baf243fb81172128c34a617")
RELAY_SEND_KEY = bytes.fromhex("e573958dd419be416b5e76f0d442d7d890ad55f60d5accc3aec85b219ba67fe9")


class ScriptedRng:
    """Hands out pre-arranged byte strings in order, checking each requested length.

    Once the script is used up, ``then`` (if given) supplies further bytes.
    """

    def __init__(self, chunks: Iterable[bytes], then: Callable[[int], bytes] | None = None) -> None:
        self._chunks = list(chunks)
        self._then = then

    def __call__(self, n: int) -> bytes:
        if not self._chunks and self._then is not None:
            return self._then(n)
        assert self._chunks, f"rng script exhausted (asked for {n} bytes)"
        chunk = self._chunks.pop(0)
        assert len(chunk) == n, f"rng asked for {n} bytes, script has {len(chunk)}"
        return chunk

    @property
    def remaining(self) -> int:
        return len(self._chunks)


Rng = Callable[[int], bytes]


def client_rng(*, extra: Iterable[bytes] = (), then: Rng | None = None) -> ScriptedRng:
    """The client's draws of spec §13.4: Nc, its X25519 private key, Sc."""
    return ScriptedRng([bytes(range(0xC0, 0xD0)), b"\x11" * 32, b"\x33" * 32, *extra], then)


def relay_rng(*, extra: Iterable[bytes] = (), then: Rng | None = None) -> ScriptedRng:
    """The relay's draws of spec §13.4: Nr, its X25519 private key, Sr."""
    return ScriptedRng([bytes(range(0xD0, 0xE0)), b"\x22" * 32, b"\x44" * 32, *extra], then)


def pump_channels(a: SecureChannel, b: SecureChannel, now: float = 0.0) -> tuple[list[bytes], list[bytes]]:
    """Delivers frames both ways until neither side has output; returns what a and b received."""
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    while True:
        to_b = [b"".join(frame) for frame in a.take_frames()]
        to_a = [b"".join(frame) for frame in b.take_frames()]
        if not to_a and not to_b:
            return got_a, got_b
        for frame in to_b:
            payload = b.receive_frame(frame, now)
            if payload is not None:
                got_b.append(payload)
        for frame in to_a:
            payload = a.receive_frame(frame, now)
            if payload is not None:
                got_a.append(payload)


def deliver(src: Link, dst: Link, now: float) -> tuple[int, list[bytes]]:
    """Moves src's pending output into dst (either mode); returns (chunks moved, payloads dst got)."""
    chunks = src.take_output()
    got: list[bytes] = []
    for chunk in chunks:
        got.extend(dst.receive_data(chunk, now) if dst.framed else dst.receive_frame(chunk, now))
    return len(chunks), got


def pump(a: Link, b: Link, now: float = 0.0) -> tuple[list[bytes], list[bytes]]:
    """Delivers output both ways until both are quiet; returns what a and b received."""
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    while True:
        moved_ab, new_b = deliver(a, b, now)
        moved_ba, new_a = deliver(b, a, now)
        got_a += new_a
        got_b += new_b
        if not moved_ab and not moved_ba:
            return got_a, got_b


def link_pair(*, framed: bool = True, now: float = 0.0, **kwargs: object) -> tuple[Link, Link]:
    """An established (client, relay) pair with fresh identities; the client expects the relay's key."""
    client_id, relay_id = Identity.generate(), Identity.generate()
    expected = relay_id.public_key
    client = Link(client_id, now=now, expected_remote=expected, framed=framed, **kwargs)  # type: ignore[arg-type]
    relay = Link(relay_id, now=now, framed=framed, **kwargs)  # type: ignore[arg-type]
    pump(client, relay, now)
    assert client.established and relay.established
    return client, relay


def transcript_links(*, then: Rng | None = None) -> tuple[Link, Link]:
    """The §13.4 pair as framed links, so tests know both send keys.

    The client pads its first payload with aa bb (§13.5). ``then`` supplies the randomness both
    draw once those scripts run out (``bytes`` gives no padding at all).
    """
    client_script = client_rng(extra=(b"\x02", b"\xaa\xbb"), then=then)
    client = Link(Identity(CLIENT_SEED), now=0.0, expected_remote=RFC8032_PUBLIC, rng=client_script)
    relay = Link(Identity(RFC8032_SEED), now=0.0, rng=relay_rng(then=then))
    return client, relay
