"""The secure channel: the §13.4 transcript, handshake failures and every rekey path of §5.6."""

from __future__ import annotations

import os

import pytest
from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305

from natrelay.offset import messages as m
from natrelay.offset.channel import RandomPool, SecureChannel, uniform_below
from natrelay.offset.crypto import DhKeyPair, Identity, hkdf_sha512_256
from natrelay.offset.errors import ProtocolError

from .link_helpers import (
    CLIENT_PUBLIC,
    CLIENT_SEED,
    CLIENT_SEND_KEY,
    RELAY_SEND_KEY,
    RFC8032_PUBLIC,
    RFC8032_SEED,
    ScriptedRng,
    client_rng,
    pump_channels,
    relay_rng,
)

NC = bytes(range(0xC0, 0xD0))
NR = bytes(range(0xD0, 0xE0))
CLIENT_DH_PUBLIC = bytes.fromhex("7b4e909bbe7ffe44c465a220037d608ee35897d31ef972f07f74892cb0f73f13")
RELAY_DH_PUBLIC = bytes.fromhex("0faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f20")
CLIENT_SIGNATURE = bytes.fromhex(
    "97a767d74a99cd37d22d73110bbf69d18ab10982cf35351c053fc82265078ea8"
    "de78f6a5ed8b3bac8a9614683645b7ca1c213819690c0c08f08cd6453d84d001"
)
RELAY_SIGNATURE = bytes.fromhex(
    "e0b9f902a45a39e9fb4a7ae983afaaf80b42ebcdc72c77c7873b83acefea5646"
    "e6869a955ed0380e13b14fee40c9802ab652a28f9f3542a2517782516eda7e07"
)
SHARED = bytes.fromhex("9e004098efc091d4ec2663b4e9f5cfd4d7064571690b4bea97ab146ab9f35056")
FIRST_CLIENT_PAYLOAD = bytes.fromhex(
    "000000000000000000000000"
    "75776456fde8fd6c5002382b7a5c65dc07972e80ccade6a9b95014761868da86e91decf8a7e64e16b5d1b2daf8881ae5a322a23722868e"
)
KA_LISTEN = m.encode_ka_message(m.encode_init_connection(m.Listen()))


def make_channel(identity: Identity, expected: bytes | None = None, **kwargs: object) -> SecureChannel:
    options: dict[str, object] = {"rng": os.urandom, "max_padding": 255, "rekey_interval": None}
    options.update(kwargs)
    return SecureChannel(identity, expected_remote=expected, **options)  # type: ignore[arg-type]


def channel_pair(**kwargs: object) -> tuple[SecureChannel, SecureChannel]:
    client_id, relay_id = Identity.generate(), Identity.generate()
    client = make_channel(client_id, relay_id.public_key, **kwargs)
    relay = make_channel(relay_id, **kwargs)
    pump_channels(client, relay)
    assert client.established and relay.established
    return client, relay


def only_frame(channel: SecureChannel) -> bytes:
    frames = channel.take_frames()
    assert len(frames) == 1
    return b"".join(frames[0])


# ------------------------------------------------------------------ §13.4 / §13.5 transcript


def transcript_channels(
    client_extra: tuple[bytes, ...] = (), relay_extra: tuple[bytes, ...] = ()
) -> tuple[SecureChannel, SecureChannel, dict[str, bytes]]:
    client = make_channel(Identity(CLIENT_SEED), RFC8032_PUBLIC, rng=client_rng(extra=client_extra))
    relay = make_channel(Identity(RFC8032_SEED), rng=relay_rng(extra=relay_extra))
    seen = {"client_rn": only_frame(client), "relay_rn": only_frame(relay)}
    client.receive_frame(seen["relay_rn"], 0.0)
    seen["client_dh"] = only_frame(client)
    relay.receive_frame(seen["client_rn"], 0.0)
    seen["relay_dh"] = only_frame(relay)
    client.receive_frame(seen["relay_dh"], 0.0)
    relay.receive_frame(seen["client_dh"], 0.0)
    return client, relay, seen


def test_deterministic_handshake_transcript() -> None:
    client, relay, seen = transcript_channels()
    client_rn, relay_rn = (m.decode_exchange_rand_nonce(seen[k]) for k in ("client_rn", "relay_rn"))
    assert client_rn == m.ExchangeRandNonce(NC, CLIENT_PUBLIC, RFC8032_PUBLIC)
    assert relay_rn == m.ExchangeRandNonce(NR, RFC8032_PUBLIC, None)
    client_dh, relay_dh = (m.decode_exchange_dh(seen[k]) for k in ("client_dh", "relay_dh"))
    assert client_dh == m.ExchangeDh(CLIENT_DH_PUBLIC, NR, b"\x33" * 32, CLIENT_SIGNATURE)
    assert relay_dh == m.ExchangeDh(RELAY_DH_PUBLIC, NC, b"\x44" * 32, RELAY_SIGNATURE)
    assert client.established and relay.established
    assert client.remote_public_key == RFC8032_PUBLIC
    assert relay.remote_public_key == CLIENT_PUBLIC


def test_transcript_key_schedule() -> None:
    assert DhKeyPair(b"\x11" * 32).exchange(RELAY_DH_PUBLIC) == SHARED
    assert hkdf_sha512_256(b"\x33" * 32, SHARED) == CLIENT_SEND_KEY
    assert hkdf_sha512_256(b"\x44" * 32, SHARED) == RELAY_SEND_KEY


def test_first_client_frame_and_relay_send_key() -> None:
    # Padding draws: one byte for the length (2), then the two padding bytes aa bb.
    client, relay, _ = transcript_channels(client_extra=(b"\x02", b"\xaa\xbb"), relay_extra=(b"\x00",))
    client.send(KA_LISTEN)
    frame = only_frame(client)
    assert frame == FIRST_CLIENT_PAYLOAD
    assert relay.receive_frame(frame, 0.0) == KA_LISTEN

    relay.send(b"from relay")
    frame = only_frame(relay)
    plaintext = ChaCha20Poly1305(RELAY_SEND_KEY).decrypt(bytes(12), frame[12:], None)
    assert frame[:12] == bytes(12)
    assert plaintext == m.encode_channel_message(b"", b"from relay")


# ------------------------------------------------------------------ handshake failures


class FakePeer:
    """Hand-made handshake frames, so tests can break exactly one property at a time."""

    def __init__(self) -> None:
        self.identity = Identity.generate()
        self.nonce = os.urandom(16)
        self.dh = DhKeyPair(os.urandom(32))
        self.salt = os.urandom(32)

    def rand_nonce(self, dest: bytes | None = None) -> bytes:
        return m.encode_exchange_rand_nonce(m.ExchangeRandNonce(self.nonce, self.identity.public_key, dest))

    def exchange_dh(
        self, echo: bytes, *, dh_public: bytes | None = None, flip_signature: bool = False
    ) -> bytes:
        dh_key = self.dh.public_key if dh_public is None else dh_public
        signature = self.identity.sign(dh_key + echo + self.salt)
        if flip_signature:
            signature = bytes([signature[0] ^ 1]) + signature[1:]
        return m.encode_exchange_dh(m.ExchangeDh(dh_key, echo, self.salt, signature))


def relay_facing(peer: FakePeer) -> tuple[SecureChannel, bytes]:
    """A relay-side channel that has accepted the fake peer's nonce; returns it and its nonce."""
    relay = make_channel(Identity.generate())
    their_nonce = m.decode_exchange_rand_nonce(only_frame(relay)).rand_nonce
    relay.receive_frame(peer.rand_nonce(dest=os.urandom(32)), 0.0)  # optDestPublicKey is ignored
    assert relay.remote_public_key == peer.identity.public_key
    assert m.decode_exchange_dh(only_frame(relay)).rand_nonce == peer.nonce
    return relay, their_nonce


def test_fake_peer_completes_a_handshake() -> None:
    peer = FakePeer()
    relay, nonce = relay_facing(peer)
    relay.receive_frame(peer.exchange_dh(nonce), 0.0)
    assert relay.established


def test_wrong_expected_key_is_refused() -> None:
    client = make_channel(Identity.generate(), os.urandom(32))
    with pytest.raises(ProtocolError, match="expected"):
        client.receive_frame(FakePeer().rand_nonce(), 0.0)
    assert client.remote_public_key is None


def test_bad_nonce_echo_is_refused() -> None:
    peer = FakePeer()
    relay, _ = relay_facing(peer)
    with pytest.raises(ProtocolError, match="nonce"):
        relay.receive_frame(peer.exchange_dh(bytes(16)), 0.0)
    assert not relay.established


def test_bad_signature_is_refused() -> None:
    peer = FakePeer()
    relay, nonce = relay_facing(peer)
    with pytest.raises(ProtocolError, match="signature"):
        relay.receive_frame(peer.exchange_dh(nonce, flip_signature=True), 0.0)


def test_all_zero_dh_key_is_refused() -> None:
    peer = FakePeer()
    relay, nonce = relay_facing(peer)
    with pytest.raises(ProtocolError, match="X25519"):
        relay.receive_frame(peer.exchange_dh(nonce, dh_public=bytes(32)), 0.0)


def test_repeated_rand_nonce_where_dh_belongs_is_refused() -> None:
    # Cap'n Proto reads structurally, so a wrong message type can parse; the checks must still fail.
    peer = FakePeer()
    relay, _ = relay_facing(peer)
    with pytest.raises(ProtocolError, match=r"nonce|signature"):
        relay.receive_frame(peer.rand_nonce(), 0.0)


def test_unparsable_handshake_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match="empty"):
        make_channel(Identity.generate()).receive_frame(b"", 0.0)
    with pytest.raises(ProtocolError, match="malformed ExchangeRandNonce"):
        make_channel(Identity.generate()).receive_frame(b"\x10\x03", 0.0)
    relay, _ = relay_facing(FakePeer())
    with pytest.raises(ProtocolError, match="malformed ExchangeDh"):
        relay.receive_frame(b"\xff" * 9, 0.0)


# ------------------------------------------------------------------ encrypted traffic


def test_user_data_both_ways_and_padding_bound() -> None:
    client, relay = channel_pair(max_padding=0)
    client.send(b"ping")
    frame = only_frame(client)
    assert len(frame) == 28 + len(m.encode_channel_message(b"", b"ping"))  # no padding at all
    assert relay.receive_frame(frame, 0.0) == b"ping"
    relay.send(b"pong")
    assert pump_channels(client, relay) == ([b"pong"], [])


def test_out_of_sequence_and_replayed_frames_are_refused() -> None:
    client, relay = channel_pair()
    client.send(b"1")
    first = only_frame(client)
    client.send(b"2")
    second = only_frame(client)
    with pytest.raises(ProtocolError, match="nonce"):
        relay.receive_frame(second, 0.0)
    client2, relay2 = channel_pair()
    client2.send(b"1")
    frame = only_frame(client2)
    relay2.receive_frame(frame, 0.0)
    with pytest.raises(ProtocolError):
        relay2.receive_frame(frame, 0.0)
    assert first != second


@pytest.mark.parametrize("length", [0, 5, 11, 12, 27])
def test_short_encrypted_frames_are_refused(length: int) -> None:
    _, relay = channel_pair()
    with pytest.raises(ProtocolError, match="minimum"):
        relay.receive_frame(bytes(length), 0.0)


def test_send_before_established_is_a_programming_error() -> None:
    with pytest.raises(RuntimeError):
        make_channel(Identity.generate()).send(b"x")


# ------------------------------------------------------------------ rekeying (spec §5.6)


@pytest.mark.parametrize("initiator_is_client", [True, False])
def test_rekey_with_data_in_flight_both_ways(initiator_is_client: bool) -> None:
    client, relay = channel_pair()
    a, b = (client, relay) if initiator_is_client else (relay, client)
    a.start_rekey()
    rekey_frame = only_frame(a)
    a.send(b"a-old")  # still under the old key: b must accept it through its old receiver
    a_old = only_frame(a)
    b.send(b"b-old")
    b_old = only_frame(b)

    assert b.receive_frame(rekey_frame, 1.0) is None
    reply = only_frame(b)  # the responder answers with its Rekey, under its old key
    assert reply[:12] == (1).to_bytes(12, "little")  # b's old counter continues after b-old
    assert b.receive_frame(a_old, 1.0) == b"a-old"
    b.send(b"b-new")
    b_new = only_frame(b)
    assert b_new[:12] == bytes(12)  # new key, counter restarted

    assert a.receive_frame(b_old, 1.0) == b"b-old"
    assert a.rekey_pending
    assert a.receive_frame(reply, 1.0) is None
    assert not a.rekey_pending
    assert a.take_frames() == []  # the initiator sends nothing in reply
    assert a.receive_frame(b_new, 1.0) == b"b-new"
    a.send(b"a-new")
    a_new = only_frame(a)
    assert a_new[:12] == bytes(12)
    assert b.receive_frame(a_new, 1.0) == b"a-new"
    assert pump_channels(client, relay) == ([], [])


def test_simultaneous_rekey() -> None:
    client, relay = channel_pair()
    client.start_rekey()
    relay.start_rekey()
    client.send(b"c-old")
    relay.send(b"r-old")
    to_relay = [b"".join(f) for f in client.take_frames()]
    to_client = [b"".join(f) for f in relay.take_frames()]
    assert [relay.receive_frame(f, 1.0) for f in to_relay] == [None, b"c-old"]
    assert [client.receive_frame(f, 1.0) for f in to_client] == [None, b"r-old"]
    assert client.take_frames() == [] and relay.take_frames() == []  # neither replies
    assert not client.rekey_pending and not relay.rekey_pending
    client.send(b"c-new")
    relay.send(b"r-new")
    frames_c, frames_r = client.take_frames(), relay.take_frames()
    assert frames_c[0][0] == bytes(12) and frames_r[0][0] == bytes(12)
    assert relay.receive_frame(b"".join(frames_c[0]), 1.0) == b"c-new"
    assert client.receive_frame(b"".join(frames_r[0]), 1.0) == b"r-new"


def test_old_receiver_is_dropped_once_the_new_key_is_used() -> None:
    client, relay = channel_pair()
    client.start_rekey()
    rekey_frame = only_frame(client)
    client.send(b"old, delayed")
    delayed = only_frame(client)
    relay.receive_frame(rekey_frame, 1.0)
    client.receive_frame(only_frame(relay), 1.0)
    client.send(b"new")
    assert relay.receive_frame(only_frame(client), 1.0) == b"new"
    with pytest.raises(ProtocolError):
        relay.receive_frame(delayed, 1.0)  # the old receiver is gone


def test_rekey_changes_the_keys() -> None:
    client, relay = channel_pair()
    client.send(b"before")
    before = only_frame(client)
    relay.receive_frame(before, 0.0)
    old_key_decryptor = relay._decryptor
    client.start_rekey()
    pump_channels(client, relay)
    client.send(b"after")
    after = only_frame(client)
    assert after[:12] == bytes(12)
    assert old_key_decryptor is not None and old_key_decryptor.try_decrypt(after) is None
    assert relay.receive_frame(after, 0.0) == b"after"


def test_start_rekey_while_pending_sends_nothing_more() -> None:
    client, _ = channel_pair()
    client.start_rekey()
    client.start_rekey()
    assert len(client.take_frames()) == 1


def test_rekey_timer_starts_and_restarts() -> None:
    client, relay = channel_pair(rekey_interval=3600.0)
    assert client.next_deadline() == relay.next_deadline() == 3600.0
    client.handle_timer(3599.9)
    assert client.take_frames() == []
    client.handle_timer(3600.0)
    rekey_frame = only_frame(client)
    assert client.rekey_pending
    assert client.next_deadline() == float("inf")  # the completion restarts the clock
    relay.receive_frame(rekey_frame, 3601.0)
    assert relay.next_deadline() == 3601.0 + 3600.0
    client.receive_frame(only_frame(relay), 3602.0)
    assert client.next_deadline() == 3602.0 + 3600.0


def test_no_rekey_timer_when_disabled() -> None:
    client, _ = channel_pair(rekey_interval=None)
    assert client.next_deadline() == float("inf")
    client.handle_timer(1e9)
    assert client.take_frames() == []


# ------------------------------------------------------------------ padding draws


def test_uniform_below_rejects_biased_draws() -> None:
    rng = ScriptedRng([b"\xff", b"\xfe", b"\x04"])  # bound 3: 255 is rejected, 254 -> 2
    assert uniform_below(rng, 3) == 2
    assert uniform_below(rng, 3) == 1
    assert uniform_below(ScriptedRng([]), 1) == 0  # nothing to draw
    assert uniform_below(ScriptedRng([b"\x01\x02"]), 65536) == 0x0102


def test_padding_lengths_are_drawn_within_bound_and_vary() -> None:
    draws: list[bytes] = []

    def recording_rng(n: int) -> bytes:
        draws.append(os.urandom(n))
        return draws[-1]

    client, relay = channel_pair(max_padding=255, rng=recording_rng)
    lengths = []
    for _ in range(200):
        draws.clear()
        client.send(b"x")
        assert relay.receive_frame(only_frame(client), 0.0) == b"x"
        assert len(draws[0]) == 1  # one byte is exactly uniform over 0..255
        lengths.append(draws[0][0])
        assert [len(d) for d in draws[1:]] == ([lengths[-1]] if lengths[-1] else [])
    assert max(lengths) <= 255
    assert len(set(lengths)) > 50


def test_random_pool_serves_slices_of_one_block_and_refills() -> None:
    calls: list[int] = []
    real = os.urandom

    def counting(n: int) -> bytes:
        calls.append(n)
        return real(n)

    pool = RandomPool(block=64)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "urandom", counting)
        parts = [pool(n) for n in (1, 20, 0, 43)]  # exactly one block
        assert calls == [64]
        assert [len(p) for p in parts] == [1, 20, 0, 43]
        assert b"".join(parts) == pool._buf  # consecutive, no byte handed out twice
        assert len(pool(2)) == 2 and calls == [64, 64]  # exhausted: a fresh block
        assert len(pool(100)) == 100 and calls == [64, 64, 100]  # larger than a block: direct


def test_random_pool_padding_is_a_length_byte_then_that_many_bytes() -> None:
    pool = RandomPool(block=4096)
    first = pool.padding()
    block = pool._buf
    assert first == block[1 : 1 + block[0]]  # the length byte, then the padding
    pos = 1 + block[0]
    lengths = [len(first)]
    while pool._buf is block:
        pad = pool.padding()
        if pool._buf is not block:  # refilled: fewer than 256 bytes were left
            assert 4096 - pos < 256
            break
        assert pad == block[pos + 1 : pos + 1 + block[pos]]
        pos += 1 + block[pos]
        lengths.append(len(pad))
    assert max(lengths) <= 255 and len(lengths) > 10


@pytest.mark.parametrize("max_padding", [255, 100])
def test_channels_given_a_pool_pad_from_it(monkeypatch: pytest.MonkeyPatch, max_padding: int) -> None:
    """The owner's pool (one per node or relay, no module state) serves every channel's padding."""
    system: list[int] = []
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: system.append(n) or real(n))
    pool = RandomPool()
    client, relay = channel_pair(max_padding=max_padding, padding=pool)
    system.clear()
    sizes = set()
    for _ in range(100):
        client.send(b"x")
        frame = only_frame(client)
        sizes.add(len(frame))
        assert relay.receive_frame(frame, 0.0) == b"x"
        user = client.seal(b"y")
        sizes.add(len(user[1]))
        assert relay.receive_frame(b"".join(user), 0.0) == b"y"
    assert len(system) <= 200 * 257 // 4096 + 1  # blocks, not a system call per draw
    assert len(sizes) > 20  # the padding still varies the frame length


def test_channels_without_a_pool_draw_padding_from_their_rng(monkeypatch: pytest.MonkeyPatch) -> None:
    system: list[int] = []
    real = os.urandom
    monkeypatch.setattr(os, "urandom", lambda n: system.append(n) or real(n))
    client, relay = channel_pair(max_padding=255)
    system.clear()
    client.send(b"x")
    assert relay.receive_frame(only_frame(client), 0.0) == b"x"
    assert system and system[0] == 1  # the length byte, drawn for this frame


def test_seal_needs_an_established_channel_and_keeps_nonce_order() -> None:
    client = make_channel(Identity.generate(), None)
    with pytest.raises(RuntimeError):
        client.seal(b"x")
    with pytest.raises(RuntimeError):
        client.seal_plaintext(b"x")
    client, relay = channel_pair()
    client.send(b"queued")
    sealed = client.seal(b"sealed")  # made after the queued frame: the next nonce
    assert relay.receive_frame(only_frame(client), 0.0) == b"queued"
    assert relay.receive_frame(b"".join(sealed), 0.0) == b"sealed"
