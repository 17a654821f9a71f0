"""Both handshake sides against each other, for flows A, B and C of spec §4.3."""

from __future__ import annotations

import pytest

from natrelay.aspia import srp
from natrelay.aspia.crypto import Cipher, MessageDecryptor, X25519KeyPair, bytes_to_int, h256, int_to_bytes
from natrelay.aspia.errors import AspiaProtocolError, DecryptionError, ErrorCode
from natrelay.aspia.handshake import Identify, SessionInfo
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import ASPIA_VERSION, parse
from natrelay.aspia.proto import key_exchange_pb2 as kx
from tests.unit.aspia.helpers import (
    SEED,
    SERVER_PRIVATE,
    SERVER_PUBLIC,
    cheap_random,
    lookup,
    make_user,
    pump,
    scripted,
    seeded_random,
)

ADMIN = make_user("admin", b"admin", sessions=3)
ROUTER = ServerConfig(
    private_key=SERVER_PRIVATE,
    seed_key=SEED,
    anonymous_sessions=12,
    users=lookup(ADMIN),
    info=SessionInfo(os_name="Linux", computer_name="router", arch="x86_64", cpu_cores=2),
)
HOST_SIDE = ServerConfig(users=lookup(ADMIN))  # a Host: no key pair, SRP only


def _pair(
    server: ServerConfig, client: ClientConfig, seed: int = 1
) -> tuple[ServerHandshake, ClientHandshake, list[tuple[str, bytes]]]:
    s = ServerHandshake(server, now=0.0, random_bytes=cheap_random(seed))
    c = ClientHandshake(client, now=0.0, random_bytes=cheap_random(seed + 1000))
    return s, c, pump(s, c)


def _srp(name: str, password: bytes, session_type: int = 2, **extra: object) -> ClientConfig:
    return ClientConfig(session_type=session_type, username=name, password=password, **extra)  # type: ignore[arg-type]


def _assert_channel_works(s: ServerHandshake, c: ClientHandshake) -> None:
    assert s.result is not None and c.result is not None
    # The counters carry on from the handshake: the next messages must line up both ways.
    for i in range(3):
        assert s.result.cipher.decrypt(c.result.cipher.encrypt(b"to host %d" % i)) == b"to host %d" % i
        assert c.result.cipher.decrypt(s.result.cipher.encrypt(b"to client")) == b"to client"


@pytest.mark.parametrize("offer", [1, 2, 3])
def test_flow_a_anonymous_relay_to_router(offer: int) -> None:
    client = ClientConfig(
        session_type=8,
        identify=Identify.ANONYMOUS,
        server_public_key=SERVER_PUBLIC,
        encryption=offer,
        info=SessionInfo(os_name="Linux", computer_name="relay", arch="x86_64", cpu_cores=4),
    )
    s, c, transcript = _pair(ROUTER, client)
    assert [sender for sender, _ in transcript] == ["client", "server", "server", "client"]
    hello = parse(kx.ClientHello, transcript[0][1])
    assert hello.identify == kx.IDENTIFY_ANONYMOUS
    assert len(hello.public_key) == 32 and len(hello.iv) == 12
    server_hello = parse(kx.ServerHello, transcript[1][1])
    assert len(server_hello.iv) == 12
    assert s.done and c.done
    assert s.result is not None and c.result is not None
    assert s.result.session_type == c.result.session_type == 8
    assert c.result.allowed_sessions == s.result.allowed_sessions == 12
    assert s.result.identify is Identify.ANONYMOUS and s.result.user_name == ""
    assert s.result.peer_version == c.result.peer_version == ASPIA_VERSION
    assert s.result.channel_ids and c.result.channel_ids
    assert s.result.peer_info == SessionInfo("Linux", "relay", "x86_64", 4)
    assert c.result.peer_info == SessionInfo("Linux", "router", "x86_64", 2)
    expected = Cipher.AES256_GCM if offer == 2 else Cipher.CHACHA20_POLY1305
    assert s.result.cipher.cipher is c.result.cipher.cipher is expected
    _assert_channel_works(s, c)


@pytest.mark.parametrize("offer", [1, 2])
def test_flow_b_srp_client_to_router(offer: int) -> None:
    s, c, transcript = _pair(ROUTER, _srp("admin", b"admin", encryption=offer))
    assert [sender[0] for sender, _ in transcript] == ["c", "s", "c", "s", "c", "s", "c"]
    hello = parse(kx.ClientHello, transcript[0][1])
    assert not hello.public_key and not hello.iv and hello.identify == kx.IDENTIFY_SRP
    assert not parse(kx.ServerHello, transcript[1][1]).iv
    assert parse(kx.SrpIdentify, transcript[2][1]).username == "admin"  # plaintext in flow B
    exchange = parse(kx.SrpServerKeyExchange, transcript[3][1])
    assert exchange.number == srp.GROUPS["4096"].n_bytes and exchange.generator == b"\x05"
    assert exchange.salt == ADMIN.salt and len(exchange.iv) == 12
    assert s.result is not None and c.result is not None
    assert s.result.user_name == c.result.user_name == "admin"
    assert s.result.identify is Identify.SRP
    assert c.result.allowed_sessions == 3 and s.result.session_type == 2
    _assert_channel_works(s, c)


def test_flow_b_client_to_host_without_server_key() -> None:
    s, c, _ = _pair(HOST_SIDE, _srp("admin", b"admin", session_type=1))
    assert s.done and c.done
    _assert_channel_works(s, c)


def test_flow_c_encrypts_srp_messages_under_k0() -> None:
    s, c, transcript = _pair(ROUTER, _srp("admin", b"admin", 1, server_public_key=SERVER_PUBLIC))
    assert len(transcript) == 7
    assert len(parse(kx.ServerHello, transcript[1][1]).iv) == 12
    plain_identify = kx.SrpIdentify(username="admin").SerializeToString()
    sealed = transcript[2][1]
    assert len(sealed) == len(plain_identify) + 16 and plain_identify not in sealed
    _assert_channel_works(s, c)


def test_spec_vector_key_for_flow_b() -> None:
    """Drive both sides with the §4.10 secrets: the session key must be the spec's K."""
    admin = make_user("Admin", b"secret", sessions=3, salt=bytes(range(64)))
    iv_s1, iv_s2, iv_c2 = b"\x01" * 12, b"\x02" * 12, b"\x03" * 12
    server = ServerHandshake(
        ServerConfig(users=lookup(admin)), 0.0, scripted(iv_s1, bytes(range(0x22, 0xA2)), iv_s2)
    )
    client = ClientHandshake(
        ClientConfig(session_type=1, username="Admin", password=b"secret", encryption=1),
        0.0,
        scripted(bytes(range(0x11, 0x91)), iv_c2),
    )
    pump(server, client)
    assert server.result is not None
    spec_k = bytes.fromhex("cd3b8384729ef018108ceb647d25805f40bdf2f66ffaa34f55ff8744d0bb7396")
    # The server has sent one message (SessionChallenge) under K from IVs2; the next uses IVs2+1.
    probe = MessageDecryptor(Cipher.CHACHA20_POLY1305, spec_k, (bytes_to_int(iv_s2) + 1).to_bytes(12, "big"))
    assert probe.decrypt(server.result.cipher.encrypt(b"probe")) == b"probe"


def test_flow_c_key_mixes_in_k0() -> None:
    eph, iv_c1, iv_c2 = bytes(range(0x31, 0x51)), b"\x04" * 12, b"\x05" * 12
    a, b = bytes(127) + b"\x07", bytes(127) + b"\x09"
    iv_s1, iv_s2 = b"\x06" * 12, b"\x07" * 12
    server = ServerHandshake(ROUTER, 0.0, scripted(iv_s1, b, iv_s2))
    client = ClientHandshake(
        _srp("admin", b"admin", 1, server_public_key=SERVER_PUBLIC), 0.0, scripted(eph, iv_c1, a, iv_c2)
    )
    pump(server, client)
    assert client.result is not None
    group = srp.GROUPS["4096"]
    k = srp.compute_k(group, srp.h512_digest)
    v = bytes_to_int(ADMIN.verifier)
    a_pub = srp.compute_a_public(group, bytes_to_int(a))
    b_pub = srp.compute_b_public(group, k, v, bytes_to_int(b))
    u = srp.compute_u(group, a_pub, b_pub, srp.h512_digest)
    premaster = srp.server_premaster(group, a_pub, v, u, bytes_to_int(b))
    k0 = X25519KeyPair.from_private_bytes(eph).derive_key(SERVER_PUBLIC)
    expected = h256(k0 + int_to_bytes(premaster))
    next_iv = (bytes_to_int(iv_c2) + 1).to_bytes(12, "big")
    probe = MessageDecryptor(client.result.cipher.cipher, expected, next_iv)
    assert probe.decrypt(client.result.cipher.encrypt(b"probe")) == b"probe"


def test_full_strength_secrets_also_agree() -> None:
    s = ServerHandshake(ROUTER, 0.0, seeded_random(7))
    c = ClientHandshake(_srp("admin", b"admin"), 0.0, seeded_random(8))
    pump(s, c)
    _assert_channel_works(s, c)


def test_wrong_password_surfaces_as_access_denied_on_the_client() -> None:
    s = ServerHandshake(ROUTER, 0.0, cheap_random(1))
    c = ClientHandshake(_srp("admin", b"wrong"), 0.0, cheap_random(2))
    with pytest.raises(DecryptionError) as info:
        pump(s, c)
    assert info.value.code is ErrorCode.ACCESS_DENIED
    assert not s.done and not c.done  # the server only ever sees the client go away


def _key_exchange_for(server: ServerConfig, name: str, seed: int = 1) -> kx.SrpServerKeyExchange:
    s = ServerHandshake(server, 0.0, cheap_random(seed))
    c = ClientHandshake(_srp(name, b"x"), 0.0, cheap_random(seed + 1))
    hello = c.start()[0]
    identify = c.receive(s.receive(hello, 1.0)[0], 1.0)[0]
    return parse(kx.SrpServerKeyExchange, s.receive(identify, 1.0)[0])


def test_unknown_user_gets_a_deterministic_fake_indistinguishable_in_shape() -> None:
    real_8192 = make_user("big", b"pw", sessions=3, group="8192", salt=b"\x99" * 64)
    server = ServerConfig(private_key=SERVER_PRIVATE, seed_key=SEED, users=lookup(real_8192))
    fake = _key_exchange_for(server, "Ghost", seed=1)
    again = _key_exchange_for(server, "Ghost", seed=5)
    real = _key_exchange_for(server, "big")
    assert fake.salt == again.salt == srp.fake_user(SEED, "Ghost")[1]
    assert fake.B != again.B  # only the ephemeral part changes between attempts
    for message in (fake, real):
        assert [f.name for f, _ in message.ListFields()] == ["number", "generator", "salt", "B", "iv"]
    assert (fake.number, fake.generator) == (real.number, real.generator)
    assert (len(fake.salt), len(fake.iv)) == (len(real.salt), len(real.iv))


def test_disabled_user_looks_exactly_like_an_unknown_one() -> None:
    disabled = make_user("Ghost", b"pw", sessions=3, flags=0)
    with_disabled = ServerConfig(seed_key=SEED, users=lookup(disabled))
    without = ServerConfig(seed_key=SEED)
    assert _key_exchange_for(with_disabled, "Ghost").salt == _key_exchange_for(without, "Ghost").salt


def test_unknown_user_ends_in_access_denied_and_lookup_is_case_sensitive() -> None:
    s = ServerHandshake(ROUTER, 0.0, cheap_random(1))
    c = ClientHandshake(_srp("ADMIN", b"admin"), 0.0, cheap_random(2))
    with pytest.raises(DecryptionError):
        pump(s, c)


def test_seed_as_password_reaches_the_fake_challenge_with_no_sessions() -> None:
    # As observed on the real router (§4.8): x uses the lower-cased name, sessions are 0.
    s = ServerHandshake(ROUTER, 0.0, cheap_random(1))
    c = ClientHandshake(_srp("GhOsT", SEED), 0.0, cheap_random(2))
    with pytest.raises(AspiaProtocolError) as info:
        pump(s, c)
    assert info.value.code is ErrorCode.SESSION_DENIED


def test_without_seed_key_the_fake_salt_changes_per_attempt() -> None:
    server = ServerConfig()
    assert _key_exchange_for(server, "nobody", 1).salt != _key_exchange_for(server, "nobody", 2).salt


def test_client_refuses_a_challenge_without_its_session_type() -> None:
    s = ServerHandshake(ROUTER, 0.0, cheap_random(1))
    c = ClientHandshake(_srp("admin", b"admin", session_type=4), 0.0, cheap_random(2))
    with pytest.raises(AspiaProtocolError) as info:
        pump(s, c)
    assert info.value.code is ErrorCode.SESSION_DENIED
