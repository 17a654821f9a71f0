"""The composed Link: both transport modes, the version prefix, wire-level refusals, nesting."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from natrelay.offset import messages as m
from natrelay.offset.crypto import Encryptor, Identity
from natrelay.offset.errors import ProtocolError
from natrelay.offset.framing import VERSION_FRAME, encode_frame, frame_header
from natrelay.offset.link import Link

from .link_helpers import CLIENT_SEND_KEY, RELAY_SEND_KEY, deliver, link_pair, pump, transcript_links
from .test_channel import FIRST_CLIENT_PAYLOAD

LISTEN = m.encode_init_connection(m.Listen())


def test_framed_link_opens_with_version_then_rand_nonce() -> None:
    identity = Identity.generate()
    link = Link(identity, now=0.0)
    out = b"".join(link.take_output())
    assert out.startswith(VERSION_FRAME)
    rest = out[len(VERSION_FRAME) :]
    assert int.from_bytes(rest[:8], "big") == len(rest) - 8
    hello = m.decode_exchange_rand_nonce(rest[8:])
    assert hello.src_public_key == identity.public_key
    assert hello.opt_dest_public_key is None  # no expected key: the relay's side


def test_first_client_frame_on_the_wire() -> None:
    client, relay = transcript_links()
    client.send(LISTEN)  # held until the handshake is done
    assert not client.established
    wire = b""
    received: list[bytes] = []
    for _ in range(3):
        chunks = client.take_output()
        wire += b"".join(chunks)
        for chunk in chunks:
            received += relay.receive_data(chunk, 0.0)
        for chunk in relay.take_output():
            client.receive_data(chunk, 0.0)
    assert received == [LISTEN]
    assert wire.endswith(frame_header(67) + FIRST_CLIENT_PAYLOAD)


def test_relay_link_first_frame_uses_the_relay_send_key() -> None:
    client, relay = transcript_links(then=bytes)
    pump(client, relay)
    relay.send(b"hello")
    chunks = relay.take_output()
    assert len(chunks) == 3  # header, nonce, ciphertext: written without joining
    header, nonce, sealed = chunks
    assert int.from_bytes(header, "big") == len(nonce) + len(sealed)
    plaintext = ChaCha20Poly1305(RELAY_SEND_KEY).decrypt(nonce, sealed, None)
    assert m.decode_channel_message(plaintext) == m.encode_ka_message(b"hello")


def test_both_sides_of_a_framed_link() -> None:
    client, relay = link_pair()
    assert relay.remote_public_key is not None and client.remote_public_key is not None
    client.send(b"to relay")
    relay.send(b"to client")
    assert pump(client, relay, 1.0) == ([b"to client"], [b"to relay"])


def test_message_mode_has_no_length_prefix_and_no_version() -> None:
    a_id, b_id = Identity.generate(), Identity.generate()
    a = Link(a_id, now=0.0, expected_remote=b_id.public_key, framed=False)
    b = Link(b_id, now=0.0, expected_remote=a_id.public_key, framed=False)
    first = a.take_output()
    assert len(first) == 1
    hello = m.decode_exchange_rand_nonce(first[0])  # a whole frame: no header, no version before it
    assert hello.opt_dest_public_key == b_id.public_key
    for frame in first:
        b.receive_frame(frame, 0.0)
    a.send(b"e2e")
    assert pump(a, b) == ([], [b"e2e"])
    b.send(b"x" * 70000)
    frames = b.take_output()
    assert len(frames) == 1 and isinstance(frames[0], bytes)
    assert a.receive_frame(frames[0], 0.0) == [b"x" * 70000]


def test_version_prefix_ignored_in_message_mode_and_optional_when_framed() -> None:
    link = Link(Identity.generate(), now=0.0, framed=False, version_prefix=True)
    assert m.decode_exchange_rand_nonce(link.take_output()[0])
    client, relay = link_pair(version_prefix=False)
    client.send(b"no version")
    assert pump(client, relay) == ([], [b"no version"])


def test_sends_before_the_handshake_are_held_in_order() -> None:
    client_id, relay_id = Identity.generate(), Identity.generate()
    client = Link(client_id, now=0.0, expected_remote=relay_id.public_key)
    relay = Link(relay_id, now=0.0)
    client.send(b"one")
    client.send(b"two")
    relay.send(b"r1")
    got_client, got_relay = pump(client, relay)
    client.send(b"three")
    assert got_relay + pump(client, relay)[1] == [b"one", b"two", b"three"]
    assert got_client == [b"r1"]


# ------------------------------------------------------------------ refusals on the wire


@pytest.mark.parametrize("version", [b"\x00\x00\x00\x01", b"\x00" * 5, b"\x00" * 3, b""])
def test_wrong_version_frame(version: bytes) -> None:
    link = Link(Identity.generate(), now=0.0)
    with pytest.raises(ProtocolError, match="version"):
        link.receive_data(encode_frame(version), 0.0)
    with pytest.raises(ProtocolError, match="already failed"):
        link.receive_data(b"", 0.0)
    with pytest.raises(ProtocolError, match="already failed"):
        link.send(b"x")


def test_oversized_frame_length() -> None:
    link = Link(Identity.generate(), now=0.0, max_frame=4096)
    link.receive_data(VERSION_FRAME, 0.0)
    with pytest.raises(ProtocolError, match="exceeds"):
        link.receive_data(frame_header(4097), 0.0)
    e2e = Link(Identity.generate(), now=0.0, framed=False, max_frame=4096)
    with pytest.raises(ProtocolError, match="exceeds"):
        e2e.receive_frame(bytes(4097), 0.0)


def test_oversized_frame_refused_on_an_established_link() -> None:
    _, relay = link_pair(max_frame=100_000)
    with pytest.raises(ProtocolError, match="exceeds"):
        relay.receive_data(frame_header(1 << 62), 1.0)


@pytest.mark.parametrize("length", [0, 5, 27])
def test_short_and_empty_encrypted_frames(length: int) -> None:
    _, relay = link_pair()
    with pytest.raises(ProtocolError, match="minimum 28"):
        relay.receive_data(encode_frame(bytes(length)), 1.0)


def test_out_of_sequence_nonce() -> None:
    client, relay = link_pair()
    client.send(b"first")
    first = b"".join(client.take_output())
    client.send(b"second")
    second = b"".join(client.take_output())
    with pytest.raises(ProtocolError, match="nonce"):
        relay.receive_data(second, 1.0)
    assert first != second


def established_transcript_pair() -> tuple[Link, Link]:
    client, relay = transcript_links()
    pump(client, relay)
    return client, relay


def test_unparsable_channel_message() -> None:
    _, relay = established_transcript_pair()
    forged = Encryptor(CLIENT_SEND_KEY).encrypt(b"\xff" * 9)  # right key and nonce, not a ChannelMessage
    with pytest.raises(ProtocolError, match="ChannelMessage"):
        relay.receive_data(encode_frame(forged), 1.0)


def test_unparsable_ka_message() -> None:
    _, relay = established_transcript_pair()
    forged = Encryptor(CLIENT_SEND_KEY).encrypt(m.encode_channel_message(b"", b"\x00"))
    with pytest.raises(ProtocolError, match="KaMessage"):
        relay.receive_data(encode_frame(forged), 1.0)


def test_wrong_expected_key_through_a_link() -> None:
    client = Link(Identity.generate(), now=0.0, expected_remote=os.urandom(32))
    relay = Link(Identity.generate(), now=0.0)
    with pytest.raises(ProtocolError, match="expected"):
        pump(client, relay)
    assert not client.established


# ------------------------------------------------------------------ the relay's forwarding path


def test_tunnel_inside_two_relay_links() -> None:
    """A -> relay -> B with an end-to-end Link in message mode riding on the relay links."""
    relay_in_a, a_link = link_pair()  # the first of each pair is the side that would be the relay
    relay_in_b, b_link = link_pair()
    a_id, b_id = Identity.generate(), Identity.generate()
    a_e2e = Link(a_id, now=0.0, expected_remote=b_id.public_key, framed=False)
    b_e2e = Link(b_id, now=0.0, expected_remote=a_id.public_key, framed=False)
    a_e2e.send(b"hello B")
    received_by_b: list[bytes] = []
    for _ in range(4):
        for frame in a_e2e.take_output():
            a_link.send(frame)
        for payload in deliver(a_link, relay_in_a, 1.0)[1]:
            relay_in_b.send(payload)  # forwarded unchanged: the received KaMessage is reused
        for payload in deliver(relay_in_b, b_link, 1.0)[1]:
            received_by_b += b_e2e.receive_frame(payload, 1.0)
        for frame in b_e2e.take_output():
            b_link.send(frame)
        for payload in deliver(b_link, relay_in_b, 1.0)[1]:
            relay_in_a.send(payload)
        for payload in deliver(relay_in_a, a_link, 1.0)[1]:
            a_e2e.receive_frame(payload, 1.0)
    assert a_e2e.established and b_e2e.established
    assert received_by_b == [b"hello B"]
