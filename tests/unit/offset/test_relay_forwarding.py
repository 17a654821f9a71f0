"""A relay hop forwards a payload by re-encrypting the ChannelMessage it received, without packing."""

from __future__ import annotations

import os

import pytest

from natrelay.offset import channel, messages
from natrelay.offset.crypto import Identity
from natrelay.offset.link import Link


def established(client_id: Identity, relay_id: Identity) -> tuple[Link, Link]:
    client = Link(client_id, now=0.0, expected_remote=relay_id.public_key)
    relay = Link(relay_id, now=0.0)
    for _ in range(4):
        for src, dst in ((client, relay), (relay, client)):
            out = b"".join(src.take_output())
            if out:
                dst.receive_data(out, 0.0)
    assert client.established and relay.established
    return client, relay


def test_forwarded_payloads_arrive_intact_and_are_not_repacked(monkeypatch: pytest.MonkeyPatch) -> None:
    relay_id = Identity.generate()
    a, relay_a = established(Identity.generate(), relay_id)
    b, relay_b = established(Identity.generate(), relay_id)
    payloads = [os.urandom(n) for n in (1, 100, 5000, 61_440, 200_000)]
    for p in payloads:
        a.send(p)
    received = relay_a.receive_data(b"".join(a.take_output()), 1.0)
    assert received == payloads

    packs: list[int] = []
    real = channel.encode_channel_message

    def counting(padding: bytes, content: bytes | messages.Rekey) -> bytes:
        packs.append(1)
        return real(padding, content)

    monkeypatch.setattr(channel, "encode_channel_message", counting)
    for p in received:
        relay_b.send(p)
    assert packs == []  # every forwarded frame reused the received plaintext
    assert b.receive_data(b"".join(relay_b.take_output()), 1.0) == payloads


def test_plain_bytes_are_packed_afresh() -> None:
    relay_id = Identity.generate()
    a, relay_a = established(Identity.generate(), relay_id)
    relay_a.send(b"fresh bytes")
    relay_a.send(b"x" * 70_000)
    assert a.receive_data(b"".join(relay_a.take_output()), 1.0) == [b"fresh bytes", b"x" * 70_000]
