"""Handshake rules checked against hand-built peers: versions, ciphers, key fields, SRP ranges,
session types, timers and misuse (spec §4.4-4.9, §12)."""

from __future__ import annotations

import pytest

from natrelay.aspia import srp
from natrelay.aspia.crypto import ChannelCipher, Cipher, X25519KeyPair, int_to_bytes
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.handshake import MAX_HANDSHAKE_MESSAGE, Identify
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import ASPIA_VERSION, Version, parse, serialize
from natrelay.aspia.proto import key_exchange_pb2 as kx
from tests.unit.aspia.helpers import (
    SEED,
    SERVER_PRIVATE,
    SERVER_PUBLIC,
    cheap_random,
    lookup,
    make_user,
    pump,
)

ADMIN = make_user("admin", b"admin", sessions=3)
ROUTER = ServerConfig(private_key=SERVER_PRIVATE, seed_key=SEED, anonymous_sessions=12, users=lookup(ADMIN))
V270 = ASPIA_VERSION.to_proto()
IV_C1 = b"\x0c" * 12
CHACHA = kx.ENCRYPTION_CHACHA20_POLY1305


def _srp_config(session_type: int = 2) -> ClientConfig:
    return ClientConfig(session_type=session_type, username="admin", password=b"admin")


def _server(config: ServerConfig = ROUTER) -> ServerHandshake:
    return ServerHandshake(config, now=0.0, random_bytes=cheap_random(3))


def _code(call: object, *args: object) -> ErrorCode:
    with pytest.raises(AspiaProtocolError) as info:
        call(*args)  # type: ignore[operator]
    return info.value.code


class AnonymousPeer:
    """A hand-made flow-A client, so the server can be fed responses a real client never sends."""

    def __init__(self) -> None:
        self.ephemeral = X25519KeyPair.generate()
        self.cipher: ChannelCipher | None = None

    def hello(self, version: bool = True, fields: dict[str, object] | None = None) -> bytes:
        hello = kx.ClientHello(
            encryption=1, identify=kx.IDENTIFY_ANONYMOUS, public_key=self.ephemeral.public_bytes, iv=IV_C1
        )
        if version:
            hello.version.CopyFrom(V270)
        for name, value in (fields or {}).items():
            setattr(hello, name, value)
        return serialize(hello)

    def accept(self, server_out: list[bytes]) -> kx.SessionChallenge:
        server_hello = parse(kx.ServerHello, server_out[0])
        k0 = self.ephemeral.derive_key(SERVER_PUBLIC)
        self.cipher = ChannelCipher(Cipher(server_hello.encryption), k0, IV_C1, server_hello.iv)
        return parse(kx.SessionChallenge, self.cipher.decrypt(server_out[1]))

    def response(self, session_type: int, version: Version | None = ASPIA_VERSION) -> bytes:
        response = kx.SessionResponse(session_type=session_type)
        if version is not None:
            response.version.CopyFrom(version.to_proto())
        assert self.cipher is not None
        return self.cipher.encrypt(serialize(response))


def _anonymous_server(peer: AnonymousPeer, version: bool = True) -> ServerHandshake:
    server = _server()
    challenge = peer.accept(server.receive(peer.hello(version), 1.0))
    assert challenge.session_types == 12
    return server


# --- versions (§4.4) --------------------------------------------------------------------------


def test_hello_version_below_270_is_refused_before_server_hello() -> None:
    hello = kx.ClientHello(encryption=1, version=Version(2, 6).to_proto())
    assert _code(_server().receive, serialize(hello), 1.0) is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize(
    ("late", "channel_ids"),
    [(Version(2, 6, 1), True), (Version(2, 6), True), (Version(2, 5, 9), False), (Version(2, 3), False)],
)
def test_pre_270_client_version_comes_from_session_response(late: Version, channel_ids: bool) -> None:
    peer = AnonymousPeer()
    server = _anonymous_server(peer, version=False)
    assert server.receive(peer.response(8, late), 1.0) == []
    assert server.result is not None
    assert server.result.peer_version == late and server.result.channel_ids is channel_ids


@pytest.mark.parametrize(
    ("late", "code"),
    [
        (Version(2, 7), ErrorCode.PROTOCOL_ERROR),
        (Version(2, 2), ErrorCode.VERSION_ERROR),
        (None, ErrorCode.VERSION_ERROR),
    ],
)
def test_late_version_rules_on_the_server(late: Version | None, code: ErrorCode) -> None:
    peer = AnonymousPeer()
    server = _anonymous_server(peer, version=False)
    assert _code(server.receive, peer.response(8, late), 1.0) is code


def _anonymous_client() -> tuple[ClientHandshake, kx.ClientHello]:
    config = ClientConfig(session_type=8, identify=Identify.ANONYMOUS, server_public_key=SERVER_PUBLIC)
    client = ClientHandshake(config, 0.0, cheap_random(4))
    return client, parse(kx.ClientHello, client.start()[0])


def _server_side_cipher(hello: kx.ClientHello, iv_s1: bytes) -> ChannelCipher:
    k0 = X25519KeyPair.from_private_bytes(SERVER_PRIVATE).derive_key(hello.public_key)
    return ChannelCipher(Cipher.CHACHA20_POLY1305, k0, iv_s1, hello.iv)


def test_pre_270_server_version_comes_from_session_challenge() -> None:
    client, hello = _anonymous_client()
    iv_s1 = b"\x51" * 12
    assert client.receive(serialize(kx.ServerHello(encryption=CHACHA, iv=iv_s1)), 1.0) == []
    challenge = kx.SessionChallenge(version=Version(2, 6).to_proto(), session_types=12)
    out = client.receive(_server_side_cipher(hello, iv_s1).encrypt(serialize(challenge)), 1.0)
    assert len(out) == 1 and client.result is not None
    assert client.result.peer_version == Version(2, 6) and client.result.channel_ids


def test_client_refuses_server_hello_with_old_version() -> None:
    client, _ = _anonymous_client()
    hello = kx.ServerHello(encryption=CHACHA, iv=b"\x51" * 12, version=Version(2, 6, 9).to_proto())
    assert _code(client.receive, serialize(hello), 1.0) is ErrorCode.PROTOCOL_ERROR


# --- cipher choice (§4.5, §12 bug 21) --------------------------------------------------------


@pytest.mark.parametrize(
    ("offer", "prefer_aes", "chosen"),
    [(1, False, 1), (2, False, 2), (3, False, 1), (3, True, 2), (1, True, 1), (7, False, 1)],
)
def test_server_chooses_only_from_the_offer(offer: int, prefer_aes: bool, chosen: int) -> None:
    server = _server(ServerConfig(prefer_aes=prefer_aes))
    out = server.receive(serialize(kx.ClientHello(encryption=offer, version=V270)), 1.0)
    assert parse(kx.ServerHello, out[0]).encryption == chosen


@pytest.mark.parametrize("offer", [0, 4, 8])
def test_offer_without_known_cipher_is_refused(offer: int) -> None:
    hello = kx.ClientHello(encryption=offer, version=V270)
    assert _code(_server().receive, serialize(hello), 1.0) is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("encryption", [0, 3, 4])
def test_client_refuses_unknown_chosen_cipher(encryption: int) -> None:
    client, _ = _anonymous_client()
    reply = kx.ServerHello(iv=b"\x51" * 12, version=V270)
    reply.encryption = encryption  # type: ignore[assignment]
    assert _code(client.receive, serialize(reply), 1.0) is ErrorCode.PROTOCOL_ERROR


# --- X25519 fields and identify (§4.6, §4.9, §12 bug 11) ---------------------------------------


@pytest.mark.parametrize(
    ("fields", "code"),
    [
        ({"iv": b""}, ErrorCode.PROTOCOL_ERROR),
        ({"public_key": b""}, ErrorCode.PROTOCOL_ERROR),
        ({"public_key": b"", "iv": b""}, ErrorCode.PROTOCOL_ERROR),  # anonymous but unencrypted
        ({"iv": b"\x01" * 11}, ErrorCode.PROTOCOL_ERROR),
        ({"public_key": b"\x01" * 31}, ErrorCode.PROTOCOL_ERROR),
        ({"public_key": bytes(32)}, ErrorCode.PROTOCOL_ERROR),  # low order point
        ({"identify": 2}, ErrorCode.PROTOCOL_ERROR),
    ],
)
def test_server_key_field_and_identify_rules(fields: dict[str, object], code: ErrorCode) -> None:
    assert _code(_server().receive, AnonymousPeer().hello(fields=fields), 1.0) is code


def test_anonymous_refused_when_disabled() -> None:
    server = _server(ServerConfig(private_key=SERVER_PRIVATE))
    assert _code(server.receive, AnonymousPeer().hello(), 1.0) is ErrorCode.ACCESS_DENIED


def test_server_without_key_pair_ignores_key_fields_and_client_notices() -> None:
    client = ClientHandshake(
        ClientConfig(session_type=1, username="admin", password=b"admin", server_public_key=SERVER_PUBLIC),
        0.0,
        cheap_random(5),
    )
    host = _server(ServerConfig(users=lookup(ADMIN)))
    server_hello = host.receive(client.start()[0], 1.0)[0]
    assert not parse(kx.ServerHello, server_hello).iv
    assert _code(client.receive, server_hello, 1.0) is ErrorCode.PROTOCOL_ERROR


@pytest.mark.parametrize("iv", [b"\x51" * 12, b"\x51" * 11])
def test_client_refuses_server_iv_it_cannot_use(iv: bytes) -> None:
    srp_client = ClientHandshake(_srp_config(), 0.0, cheap_random(6))
    srp_client.start()
    # An iv although we sent no public key, or (for the anonymous client) a malformed one.
    reply = serialize(kx.ServerHello(encryption=CHACHA, iv=iv, version=V270))
    assert _code(srp_client.receive, reply, 1.0) is ErrorCode.PROTOCOL_ERROR
    if len(iv) != 12:
        client, _ = _anonymous_client()
        assert _code(client.receive, reply, 1.0) is ErrorCode.PROTOCOL_ERROR


# --- session types (§4.9) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("requested", "code"),
    [
        (3, ErrorCode.PROTOCOL_ERROR),
        (0, ErrorCode.PROTOCOL_ERROR),
        (1, ErrorCode.SESSION_DENIED),
        (16, ErrorCode.SESSION_DENIED),
    ],
)
def test_server_session_type_rules(requested: int, code: ErrorCode) -> None:
    peer = AnonymousPeer()
    server = _anonymous_server(peer)
    assert _code(server.receive, peer.response(requested), 1.0) is code
    assert not server.done


# --- SRP values (§4.7) ------------------------------------------------------------------------


def _server_awaiting_a() -> ServerHandshake:
    server = _server()
    server.receive(serialize(kx.ClientHello(encryption=1, version=V270)), 1.0)
    server.receive(serialize(kx.SrpIdentify(username="admin")), 1.0)
    return server


N4096 = srp.GROUPS["4096"].N


@pytest.mark.parametrize(
    ("a_value", "iv", "code"),
    [
        (b"", b"\x01" * 12, ErrorCode.PROTOCOL_ERROR),
        (b"\x05", b"", ErrorCode.PROTOCOL_ERROR),
        (b"\x05", b"\x01" * 13, ErrorCode.PROTOCOL_ERROR),
        (b"\x00", b"\x01" * 12, ErrorCode.UNKNOWN_ERROR),
        (int_to_bytes(N4096), b"\x01" * 12, ErrorCode.UNKNOWN_ERROR),
        (int_to_bytes(2 * N4096), b"\x01" * 12, ErrorCode.UNKNOWN_ERROR),
        (b"\x01" * 600, b"\x01" * 12, ErrorCode.UNKNOWN_ERROR),
    ],
)
def test_server_checks_client_public_value(a_value: bytes, iv: bytes, code: ErrorCode) -> None:
    exchange = kx.SrpClientKeyExchange(A=a_value, iv=iv)
    assert _code(_server_awaiting_a().receive, serialize(exchange), 1.0) is code


def _client_awaiting_b() -> ClientHandshake:
    client = ClientHandshake(_srp_config(), 0.0, cheap_random(7))
    client.start()
    client.receive(serialize(kx.ServerHello(encryption=CHACHA, version=V270)), 1.0)
    return client


G4096 = srp.GROUPS["4096"]


@pytest.mark.parametrize(
    "fields",
    [
        {"salt": b""},
        {"B": b""},
        {"B": b"\x00"},
        {"B": int_to_bytes(G4096.N)},
        {"B": b"\x01" * 513},
        {"iv": b"\x01" * 11},
        {"number": srp.GROUPS["2048"].n_bytes, "generator": b"\x02"},
        {"generator": b"\x02"},
    ],
)
def test_client_checks_server_key_exchange(fields: dict[str, bytes]) -> None:
    exchange = kx.SrpServerKeyExchange(
        number=G4096.n_bytes, generator=G4096.g_bytes, salt=b"\x07" * 64, B=b"\x09" * 512, iv=b"\x01" * 12
    )
    for name, value in fields.items():
        setattr(exchange, name, value)
    assert _code(_client_awaiting_b().receive, serialize(exchange), 1.0) is ErrorCode.PROTOCOL_ERROR


# --- timer and misuse -------------------------------------------------------------------------


def test_whole_handshake_timer() -> None:
    server = ServerHandshake(ROUTER, now=100.0, random_bytes=cheap_random(1))
    assert server.deadline == 160.0
    server.check_timeout(159.9)
    hello = serialize(kx.ClientHello(encryption=1, version=V270))
    assert _code(server.receive, hello, 160.0) is ErrorCode.TIMEOUT
    assert _code(server.receive, hello, 1.0) is ErrorCode.PROTOCOL_ERROR  # stays failed
    short = ClientHandshake(ClientConfig(session_type=2, username="a", timeout=5.0), now=0.0)
    assert _code(short.check_timeout, 5.0) is ErrorCode.TIMEOUT


def test_completed_handshake_ignores_timer_and_refuses_more_messages() -> None:
    server = _server()
    client = ClientHandshake(_srp_config(), 0.0, cheap_random(8))
    pump(server, client)
    server.check_timeout(1e9)
    client.check_timeout(1e9)
    assert _code(server.receive, b"\x08\x01", 2.0) is ErrorCode.PROTOCOL_ERROR
    assert _code(client.receive, b"\x08\x01", 2.0) is ErrorCode.PROTOCOL_ERROR


def test_failure_is_sticky() -> None:
    server = _server()
    with pytest.raises(AspiaProtocolError):
        server.receive(b"\xff", 1.0)
    with pytest.raises(AspiaProtocolError):
        server.receive(serialize(kx.ClientHello(encryption=1, version=V270)), 1.0)


def test_message_size_and_emptiness_bounds() -> None:
    assert _code(_server().receive, b"", 1.0) is ErrorCode.PROTOCOL_ERROR
    big = serialize(kx.ClientHello(encryption=1, version=V270, public_key=b"k" * MAX_HANDSHAKE_MESSAGE))
    assert _code(_server().receive, big, 1.0) is ErrorCode.PROTOCOL_ERROR


def test_client_must_start_first_and_only_once() -> None:
    client = ClientHandshake(ClientConfig(session_type=2, username="admin"), 0.0)
    assert _code(client.receive, b"\x08\x01", 1.0) is ErrorCode.PROTOCOL_ERROR
    other = ClientHandshake(ClientConfig(session_type=2, username="admin"), 0.0)
    other.start()
    with pytest.raises(RuntimeError):
        other.start()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"session_type": 0, "username": "a"},
        {"session_type": 3, "username": "a"},
        {"session_type": 2, "username": ""},
        {"session_type": 2, "username": "a", "encryption": 4},
        {"session_type": 8, "identify": Identify.ANONYMOUS},
        {"session_type": 2, "username": "a", "server_public_key": b"\x01" * 31},
    ],
)
def test_client_config_validation(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ClientConfig(**kwargs)  # type: ignore[arg-type]


def test_server_config_validation() -> None:
    with pytest.raises(ValueError):
        ServerConfig(anonymous_sessions=12)
    with pytest.raises(ValueError):
        ServerConfig(private_key=b"\x01" * 31)
