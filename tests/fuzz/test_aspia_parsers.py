"""Fuzzing every Aspia parser and both handshake sides in every state.

Whatever arrives, only AspiaProtocolError may escape. Encrypted handshake states are fed three
kinds of input: raw bytes (exercising the AEAD check), arbitrary bytes sealed under the right
key (exercising protobuf parsing), and well-formed messages with arbitrary field values
(exercising the validation rules behind the parser).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import cast

import pytest
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from natrelay.aspia import srp
from natrelay.aspia.crypto import (
    ChannelCipher,
    Cipher,
    MessageDecryptor,
    X25519KeyPair,
    bytes_to_int,
    h256,
    int_to_bytes,
    open_relay_secret,
)
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.framing import (
    MAX_SIZE_FIELD,
    DataFrame,
    FrameDecoder,
    KeepAlive,
    KeepAliveFrame,
    decode_size,
    encode_size,
    encode_user_frame,
    split_channel_header,
)
from natrelay.aspia.handshake import Identify
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import ASPIA_VERSION, PeerToRelayReader, parse, serialize
from natrelay.aspia.proto import (
    common_pb2,
    relay_peer_pb2,
    router_admin_pb2,
    router_common_pb2,
    router_peer_pb2,
    router_relay_pb2,
)
from natrelay.aspia.proto import key_exchange_pb2 as kx
from tests.unit.aspia.helpers import SEED, SERVER_PRIVATE, SERVER_PUBLIC, cheap_random, lookup, make_user

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW_FUZZ = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def only_protocol_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(AspiaProtocolError):
        call()


# --- framing ----------------------------------------------------------------------------------


@FUZZ
@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=20))
def test_frame_decoder_raises_only_protocol_errors(data: bytes, cuts: list[int]) -> None:
    decoder = FrameDecoder(max_frame=300)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            decoder.feed(data[pos : pos + cut])
            pos += cut
    except AspiaProtocolError:
        only_protocol_errors(lambda: decoder.feed(b"\x01x"))  # stays failed, still the same type


@FUZZ
@given(st.lists(st.tuples(st.binary(min_size=1, max_size=300), st.none() | st.integers(0, 255)), max_size=8))
def test_user_frames_round_trip(frames: list[tuple[bytes, int | None]]) -> None:
    wire = b"".join(encode_user_frame(payload, channel) for payload, channel in frames)
    decoded = FrameDecoder().feed(wire)
    assert len(decoded) == len(frames)
    for frame, (payload, channel) in zip(decoded, frames, strict=True):
        assert isinstance(frame, DataFrame)
        if channel is None:
            assert frame.body == payload
        else:
            assert split_channel_header(frame.body) == (channel, payload)


@FUZZ
@given(st.integers(0, MAX_SIZE_FIELD))
def test_size_field_round_trip(size: int) -> None:
    wire = encode_size(size)
    assert decode_size(wire + b"\xff") == (size, len(wire))


@FUZZ
@given(st.binary(max_size=6))
def test_decode_size_never_fails(data: bytes) -> None:
    result = decode_size(data)
    if result is not None:
        value, used = result
        assert 1 <= used <= min(4, len(data)) and 0 <= value <= MAX_SIZE_FIELD


@FUZZ
@given(st.binary(max_size=8))
def test_channel_header_split(body: bytes) -> None:
    only_protocol_errors(lambda: split_channel_header(body))


@FUZZ
@given(st.booleans(), st.booleans(), st.binary(min_size=1, max_size=8))
def test_keepalive_frames(enabled: bool, pinged: bool, data: bytes) -> None:
    ka = KeepAlive()
    if enabled:
        ka.enable(0.0)
        if pinged:
            ka.on_timer(60.0)
    only_protocol_errors(lambda: ka.on_frame(KeepAliveFrame(False, data), 61.0))
    assert ka.on_frame(KeepAliveFrame(True, data), 61.0)  # pings are always answered


# --- protobuf parsers -------------------------------------------------------------------------

ALL_TYPES: list[type[Message]] = [
    cls
    for module in (kx, router_common_pb2, router_relay_pb2, router_peer_pb2, relay_peer_pb2, router_admin_pb2)
    for cls in (getattr(module, name) for name in module.DESCRIPTOR.message_types_by_name)
]


@pytest.mark.parametrize("message_type", ALL_TYPES, ids=lambda cls: cls.__name__)
@settings(max_examples=60, deadline=None)
@given(data=st.binary(max_size=200))
def test_every_message_parser(message_type: type[Message], data: bytes) -> None:
    only_protocol_errors(lambda: parse(message_type, data))


@FUZZ
@given(st.binary(max_size=300), st.lists(st.integers(1, 40), max_size=10))
def test_peer_to_relay_reader(data: bytes, cuts: list[int]) -> None:
    reader = PeerToRelayReader(max_size=200)
    pos = 0
    try:
        for cut in [*cuts, len(data)]:
            reader.feed(data[pos : pos + cut])
            pos += cut
    except AspiaProtocolError:
        return
    assert reader.wanted >= 0


@FUZZ
@given(st.sampled_from(list(Cipher)), st.binary(max_size=64))
def test_decryptor(cipher: Cipher, data: bytes) -> None:
    only_protocol_errors(lambda: MessageDecryptor(cipher, bytes(32), bytes(12)).decrypt(data))


RELAY = X25519KeyPair.from_private_bytes(bytes(range(1, 33)))


@FUZZ
@given(st.binary(max_size=40), st.binary(max_size=13), st.binary(max_size=40))
def test_relay_secret_opening(peer_public: bytes, iv: bytes, data: bytes) -> None:
    only_protocol_errors(lambda: open_relay_secret(RELAY, iv, peer_public, data))


@FUZZ
@given(st.binary(max_size=600), st.binary(max_size=10))
def test_client_group_check(number: bytes, generator: bytes) -> None:
    only_protocol_errors(lambda: srp.client_group(number, generator))


# --- handshake states -------------------------------------------------------------------------

SMALL = make_user("small", b"pw", sessions=3, group="1024")  # cheap server-side maths
ADMIN = make_user("admin", b"admin", sessions=3)
ROUTER = ServerConfig(
    private_key=SERVER_PRIVATE, seed_key=SEED, anonymous_sessions=12, users=lookup(SMALL, ADMIN)
)
V270 = ASPIA_VERSION.to_proto()
IV_C1, IV_C2, IV_S1, IV_S2 = b"\x11" * 12, b"\x22" * 12, b"\x33" * 12, b"\x44" * 12
EPHEMERAL = X25519KeyPair.from_private_bytes(bytes(range(0x41, 0x61)))
K0 = EPHEMERAL.derive_key(SERVER_PUBLIC)
G4096 = srp.GROUPS["4096"]
ADMIN_V = bytes_to_int(ADMIN.verifier)

Seal = Callable[[bytes], bytes]
State = tuple[ServerHandshake | ClientHandshake, Seal, type[Message]]


def _plain(data: bytes) -> bytes:
    return data


def _server(*messages: bytes) -> ServerHandshake:
    server = ServerHandshake(ROUTER, 0.0, cheap_random(1))
    for message in messages:
        server.receive(message, 1.0)
    return server


def _keyed_hello(identify: int) -> bytes:
    hello = kx.ClientHello(encryption=1, public_key=EPHEMERAL.public_bytes, iv=IV_C1, version=V270)
    hello.identify = identify  # type: ignore[assignment]
    return serialize(hello)


def s_hello() -> State:
    return _server(), _plain, kx.ClientHello


def s_identify_b() -> State:
    return _server(serialize(kx.ClientHello(encryption=1, version=V270))), _plain, kx.SrpIdentify


def _c_cipher() -> ChannelCipher:
    """Our hand-made client's K0 cipher (server IVs1 comes from cheap_random(1))."""
    return ChannelCipher(Cipher.CHACHA20_POLY1305, K0, IV_C1, cheap_random(1)(12))


def s_identify_c() -> State:
    return _server(_keyed_hello(kx.IDENTIFY_SRP)), _c_cipher().encrypt, kx.SrpIdentify


def s_key_exchange_b() -> State:
    hello = serialize(kx.ClientHello(encryption=1, version=V270))
    server = _server(hello, serialize(kx.SrpIdentify(username="small")))
    return server, _plain, kx.SrpClientKeyExchange


def s_key_exchange_c() -> State:
    cipher = _c_cipher()
    identify = cipher.encrypt(serialize(kx.SrpIdentify(username="small")))
    return _server(_keyed_hello(kx.IDENTIFY_SRP), identify), cipher.encrypt, kx.SrpClientKeyExchange


def s_session_a() -> State:
    return _server(_keyed_hello(kx.IDENTIFY_ANONYMOUS)), _c_cipher().encrypt, kx.SessionResponse


def s_session_b() -> State:
    """A hand-driven SRP client over the 1024-bit group (which only servers accept)."""
    server = _server(serialize(kx.ClientHello(encryption=1, version=V270)))
    (reply,) = server.receive(serialize(kx.SrpIdentify(username="small")), 1.0)
    exchange = parse(kx.SrpServerKeyExchange, reply)
    group, a = srp.GROUPS["1024"], 0x1234567
    a_public, b_public = srp.compute_a_public(group, a), bytes_to_int(exchange.B)
    x = srp.aspia_x(exchange.salt, "small", b"pw")
    u = srp.compute_u(group, a_public, b_public, srp.h512_digest)
    premaster = srp.client_premaster(group, srp.compute_k(group, srp.h512_digest), b_public, x, a, u)
    server.receive(serialize(kx.SrpClientKeyExchange(A=int_to_bytes(a_public), iv=IV_C2)), 1.0)
    cipher = ChannelCipher(Cipher.CHACHA20_POLY1305, h256(int_to_bytes(premaster)), IV_C2, exchange.iv)
    return server, cipher.encrypt, kx.SessionResponse


def _client(config: ClientConfig) -> tuple[ClientHandshake, kx.ClientHello]:
    client = ClientHandshake(config, 0.0, cheap_random(2))
    return client, parse(kx.ClientHello, client.start()[0])


SRP_CLIENT = ClientConfig(session_type=2, username="admin", password=b"admin")


def c_hello() -> State:
    return _client(SRP_CLIENT)[0], _plain, kx.ServerHello


def c_hello_keyed() -> State:
    config = ClientConfig(session_type=8, identify=Identify.ANONYMOUS, server_public_key=SERVER_PUBLIC)
    return _client(config)[0], _plain, kx.ServerHello


def _s_cipher(hello: kx.ClientHello) -> ChannelCipher:
    """Our hand-made server's K0 cipher toward a real client."""
    k0 = X25519KeyPair.from_private_bytes(SERVER_PRIVATE).derive_key(hello.public_key)
    return ChannelCipher(Cipher.CHACHA20_POLY1305, k0, IV_S1, hello.iv)


def c_key_exchange_b() -> State:
    client, _ = _client(SRP_CLIENT)
    client.receive(serialize(kx.ServerHello(encryption=kx.ENCRYPTION_CHACHA20_POLY1305, version=V270)), 1.0)
    return client, _plain, kx.SrpServerKeyExchange


def c_key_exchange_c() -> State:
    config = ClientConfig(2, username="admin", password=b"admin", server_public_key=SERVER_PUBLIC)
    client, hello = _client(config)
    client.receive(
        serialize(kx.ServerHello(encryption=kx.ENCRYPTION_CHACHA20_POLY1305, iv=IV_S1, version=V270)), 1.0
    )
    return client, _s_cipher(hello).encrypt, kx.SrpServerKeyExchange


def c_session_a() -> State:
    config = ClientConfig(session_type=8, identify=Identify.ANONYMOUS, server_public_key=SERVER_PUBLIC)
    client, hello = _client(config)
    client.receive(
        serialize(kx.ServerHello(encryption=kx.ENCRYPTION_CHACHA20_POLY1305, iv=IV_S1, version=V270)), 1.0
    )
    return client, _s_cipher(hello).encrypt, kx.SessionChallenge


def c_session_b() -> State:
    """A hand-driven SRP server (4096-bit, as the client insists) with a short secret b."""
    client, _ = _client(SRP_CLIENT)
    client.receive(serialize(kx.ServerHello(encryption=kx.ENCRYPTION_CHACHA20_POLY1305, version=V270)), 1.0)
    k, b = srp.compute_k(G4096, srp.h512_digest), 0x7654321
    b_public = srp.compute_b_public(G4096, k, ADMIN_V, b)
    exchange = kx.SrpServerKeyExchange(
        number=G4096.n_bytes, generator=G4096.g_bytes, salt=ADMIN.salt, B=int_to_bytes(b_public), iv=IV_S2
    )
    (reply,) = client.receive(serialize(exchange), 1.0)
    a_public = bytes_to_int(parse(kx.SrpClientKeyExchange, reply).A)
    u = srp.compute_u(G4096, a_public, b_public, srp.h512_digest)
    premaster = srp.server_premaster(G4096, a_public, ADMIN_V, u, b)
    cipher = ChannelCipher(Cipher.CHACHA20_POLY1305, h256(int_to_bytes(premaster)), IV_S2, IV_C2)
    return client, cipher.encrypt, kx.SessionChallenge


CHEAP_STATES = [
    s_hello, s_identify_b, s_identify_c, s_key_exchange_b, s_key_exchange_c, s_session_a, s_session_b,
    c_hello, c_hello_keyed, c_key_exchange_b, c_key_exchange_c, c_session_a,
]  # fmt: skip


def _field_value(field: FieldDescriptor) -> st.SearchStrategy[object]:
    if field.type == FieldDescriptor.TYPE_BYTES:
        interesting = [b"", b"\x00", bytes(12), b"\x01" * 32, G4096.n_bytes, G4096.g_bytes]
        return st.one_of(st.sampled_from(interesting), st.binary(max_size=40))
    if field.type == FieldDescriptor.TYPE_STRING:
        return st.text(max_size=12)
    if field.enum_type is not None:  # proto3 enums are open int32s
        return st.one_of(st.integers(0, 4), st.integers(-(2**31), 2**31 - 1))
    return st.one_of(st.integers(0, 40), st.integers(0, 2**32 - 1))


@st.composite
def well_formed(draw: st.DrawFn, message_type: type[Message]) -> bytes:
    message = message_type()
    for field in message_type.DESCRIPTOR.fields:
        if field.message_type is not None:  # only Version is nested in handshake messages
            if draw(st.booleans()):
                major, minor = draw(st.integers(0, 4)), draw(st.integers(0, 9))
                getattr(message, field.name).CopyFrom(common_pb2.Version(major=major, minor=minor))
        elif draw(st.booleans()):
            setattr(message, field.name, draw(_field_value(cast(FieldDescriptor, field))))
    return message.SerializeToString()


def _fuzz_state(make: Callable[[], State], data: st.DataObject) -> None:
    machine, seal, message_type = make()
    mode = data.draw(st.sampled_from(["raw", "sealed", "well_formed"]))
    if mode == "raw":
        payload = data.draw(st.binary(max_size=80))
    elif mode == "sealed":
        payload = seal(data.draw(st.binary(max_size=80)))
    else:
        payload = seal(data.draw(well_formed(message_type)))
    try:
        out = machine.receive(payload, 2.0)
    except AspiaProtocolError:
        return
    assert all(isinstance(item, bytes) and item for item in out)


@pytest.mark.parametrize("make", CHEAP_STATES, ids=lambda f: f.__name__)
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_handshake_state_takes_any_input(make: Callable[[], State], data: st.DataObject) -> None:
    _fuzz_state(make, data)


@SLOW_FUZZ
@given(data=st.data())
def test_srp_client_awaiting_challenge_takes_any_input(data: st.DataObject) -> None:
    # Separate and fewer examples: every example redoes the client's 4096-bit maths (0.1-0.4 s).
    _fuzz_state(c_session_b, data)


def _valid_next() -> dict[Callable[[], State], Message]:
    n1024 = srp.GROUPS["1024"].N
    client_exchange = kx.SrpClientKeyExchange(A=int_to_bytes(pow(2, 12345, n1024)), iv=IV_C2)
    b_public = int_to_bytes(pow(5, 99, G4096.N))
    server_exchange = kx.SrpServerKeyExchange(
        number=G4096.n_bytes, generator=G4096.g_bytes, salt=b"\x07" * 64, B=b_public, iv=IV_S2
    )
    return {
        s_hello: kx.ClientHello(encryption=1, version=V270),
        s_identify_b: kx.SrpIdentify(username="small"),
        s_identify_c: kx.SrpIdentify(username="small"),
        s_key_exchange_b: client_exchange,
        s_key_exchange_c: client_exchange,
        s_session_a: kx.SessionResponse(session_type=8, version=V270),
        s_session_b: kx.SessionResponse(session_type=2, version=V270),
        c_hello: kx.ServerHello(encryption=kx.ENCRYPTION_CHACHA20_POLY1305, version=V270),
        c_hello_keyed: kx.ServerHello(encryption=kx.ENCRYPTION_CHACHA20_POLY1305, iv=IV_S1, version=V270),
        c_key_exchange_b: server_exchange,
        c_key_exchange_c: server_exchange,
        c_session_a: kx.SessionChallenge(session_types=12, version=V270),
        c_session_b: kx.SessionChallenge(session_types=3, version=V270),
    }


def test_state_factories_reach_their_states() -> None:
    """The fuzz targets only mean something if each factory stops where it claims and its seal
    function produces input that state accepts: a wrong key would make every example a mere
    AEAD failure."""
    for make, message in _valid_next().items():
        machine, seal, message_type = make()
        assert isinstance(message, message_type) and not machine.done, make.__name__
        machine.receive(seal(serialize(message)), 2.0)
        assert machine.done is (message_type in (kx.SessionResponse, kx.SessionChallenge)), make.__name__
