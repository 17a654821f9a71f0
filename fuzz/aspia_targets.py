"""Fuzz targets of the Aspia family: framing and keep-alive, every protobuf parser, both handshake
sides in every state, the composed channel, the relay's PeerToRelay reading and pairing, the
router's session core and the peers' router sessions.

Only :class:`natrelay.aspia.errors.AspiaProtocolError` may escape a target; everything else is a
finding. Invariants a crash would not reveal are checked with ``assert``.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from google.protobuf.message import Message

from fuzz.harness import Input, Target, chunked, lengthed
from fuzz.protobuf_gen import build
from natrelay.aspia import srp
from natrelay.aspia.channel import Channel
from natrelay.aspia.crypto import seal_relay_secret
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.framing import (
    DataFrame,
    FrameDecoder,
    KeepAlive,
    KeepAliveFrame,
    decode_size,
    encode_keepalive,
    encode_user_frame,
    split_channel_header,
)
from natrelay.aspia.handshake import (
    ClientConfig,
    ClientHandshake,
    Identify,
    ServerConfig,
    ServerHandshake,
    SessionInfo,
)
from natrelay.aspia.messages import (
    ASPIA_VERSION,
    PeerToRelayReader,
    check_relay_credentials,
    encode_peer_to_relay,
    first_present,
    hello_version,
    late_version,
    parse,
    serialize,
)
from natrelay.aspia.peer.router_session import ClientRouterSession, HostRouterSession
from natrelay.aspia.proto import (
    common_pb2,
    relay_peer_pb2,
    router_admin_pb2,
    router_common_pb2,
    router_peer_pb2,
    router_relay_pb2,
)
from natrelay.aspia.proto import key_exchange_pb2 as kx
from natrelay.aspia.relay.keypool import KeyPool as RelayKeyPool
from natrelay.aspia.relay.pairing import Pairing, PeerInfo
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.sessions import SessionKind
from tests.fuzz.test_aspia_parsers import CHEAP_STATES, State, _valid_next
from tests.unit.aspia.helpers import SEED, SERVER_PRIVATE, SERVER_PUBLIC, cheap_random, lookup, make_user

G4096 = srp.GROUPS["4096"]
INTERESTING = (bytes(32), b"\x01" * 32, bytes(12), SERVER_PUBLIC, G4096.n_bytes, G4096.g_bytes, b"\xff" * 64)

ALL_TYPES: tuple[type[Message], ...] = tuple(
    cls
    for module in (kx, common_pb2, router_common_pb2, router_relay_pb2, router_peer_pb2, relay_peer_pb2,
                   router_admin_pb2)
    for cls in (getattr(module, name) for name in sorted(module.DESCRIPTOR.message_types_by_name))
)


# ---------------------------------------------------------------------------- framing
def framing(data: bytes) -> None:
    """Varint size frames, keep-alive frames and the 2-byte channel header, over reads cut anywhere."""
    inp = Input(data)
    max_frame = inp.below(300) + 1
    decoder = FrameDecoder(max_frame)
    ka = KeepAlive(30.0, 15.0)
    if inp.flag():
        ka.enable(0.0)
    now = 0.0
    try:
        for chunk in inp.chunks():
            got = decode_size(chunk)
            if got is not None:
                assert 1 <= got[1] <= 4
            for frame in decoder.feed(chunk):
                now += 1.0
                if isinstance(frame, DataFrame):
                    assert len(frame.body) <= max_frame
                    with contextlib.suppress(AspiaProtocolError):
                        split_channel_header(frame.body)
                else:
                    assert isinstance(frame, KeepAliveFrame)
                    ka.on_frame(frame, now)
            # What stays buffered is one unfinished frame: at most a size byte, the 8-byte
            # service header and max_frame bytes, less the one still missing.
            assert decoder.buffered < 1 + 8 + max_frame
            if inp.flag():
                now += inp.byte()
                ka.on_timer(now)
    except AspiaProtocolError:
        return


def _framing_seeds() -> list[bytes]:
    frames = encode_user_frame(b"hello") + encode_keepalive(True, b"\x00" * 4) + encode_user_frame(b"x", 3)
    return [bytes([255, 1, 1]) + chunked(frames), bytes([100, 0, 1]) + chunked(frames[:3], frames[3:])]


# --------------------------------------------------------------------------- messages
def messages(data: bytes) -> None:
    """Every protobuf message type, and the checks applied right after parsing."""
    inp = Input(data)
    message_type = ALL_TYPES[inp.choose(ALL_TYPES)]
    raw = build(message_type, inp, extra_bytes=INTERESTING) if inp.flag() else inp.rest()
    try:
        message = parse(message_type, raw)
        if isinstance(message, kx.ClientHello | kx.ServerHello):
            hello_version(message)
        elif isinstance(message, kx.SessionChallenge | kx.SessionResponse):
            late_version(message)
        elif isinstance(message, router_common_pb2.RelayCredentials):
            check_relay_credentials(message)
        elif isinstance(message, router_peer_pb2.PeerToRouter | router_peer_pb2.RouterToPeer
                        | router_relay_pb2.RelayToRouter | router_relay_pb2.RouterToRelay
                        | router_admin_pb2.AdminToRouter | router_admin_pb2.RouterToAdmin):
            names = [f.name for f in message.DESCRIPTOR.fields]
            found = first_present(message, names)
            assert found is None or found[0] in names
    except AspiaProtocolError:
        return


def _message_seeds() -> list[bytes]:
    return [bytes([i, 0]) + b"\x08\x01\x12\x02ab" for i in range(len(ALL_TYPES))]


# -------------------------------------------------------------------------- handshake
_SESSION_B: list[tuple[bytes, bytes, bytes, bytes, bytes]] = []


def _s_session_b_cached() -> State:
    """``s_session_b`` of the hypothesis tests without redoing the client's SRP maths per input.

    The server draws from ``cheap_random(1)``, so for the same client messages it ends in the same
    state; the client's messages and the session key are computed once and replayed.
    """
    from natrelay.aspia.crypto import ChannelCipher, Cipher, bytes_to_int, h256, int_to_bytes
    from natrelay.aspia.handshake import ServerHandshake as _SH
    from tests.fuzz.test_aspia_parsers import ROUTER as FUZZ_ROUTER

    if not _SESSION_B:
        hello = serialize(kx.ClientHello(encryption=1, version=ASPIA_VERSION.to_proto()))
        identify = serialize(kx.SrpIdentify(username="small"))
        probe = _SH(FUZZ_ROUTER, 0.0, cheap_random(1))
        probe.receive(hello, 1.0)
        (reply,) = probe.receive(identify, 1.0)
        exchange = parse(kx.SrpServerKeyExchange, reply)
        group, a = srp.GROUPS["1024"], 0x1234567
        a_public, b_public = srp.compute_a_public(group, a), bytes_to_int(exchange.B)
        x = srp.aspia_x(exchange.salt, "small", b"pw")
        u = srp.compute_u(group, a_public, b_public, srp.h512_digest)
        premaster = srp.client_premaster(group, srp.compute_k(group, srp.h512_digest), b_public, x, a, u)
        client_exchange = serialize(kx.SrpClientKeyExchange(A=int_to_bytes(a_public), iv=b"\x22" * 12))
        key = h256(int_to_bytes(premaster))
        _SESSION_B.append((hello, identify, client_exchange, key, exchange.iv))
    hello, identify, client_exchange, key, server_iv = _SESSION_B[0]
    server = _SH(FUZZ_ROUTER, 0.0, cheap_random(1))
    for message in (hello, identify, client_exchange):
        server.receive(message, 1.0)
    cipher = ChannelCipher(Cipher.CHACHA20_POLY1305, key, b"\x22" * 12, server_iv)
    return server, cipher.encrypt, kx.SessionResponse


def _handshake_states() -> list[Callable[[], State]]:
    return [_s_session_b_cached if make.__name__ == "s_session_b" else make for make in CHEAP_STATES]


HANDSHAKE_STATES = _handshake_states()


def handshake(data: bytes) -> None:
    """Both handshake sides in every state (but the 4096-bit SRP client's last, too slow to
    rebuild per input), fed raw bytes, bytes sealed under the right key, or a well-formed message
    with fuzzed fields; a state that accepts its input is fed a second message."""
    inp = Input(data)
    make = HANDSHAKE_STATES[inp.choose(HANDSHAKE_STATES)]
    machine, seal, message_type = make()
    now = 1.0
    for _ in range(2):
        mode = inp.below(3)
        if mode == 0:
            payload = inp.take()
        elif mode == 1:
            payload = seal(inp.take())
        else:
            payload = seal(build(message_type, inp, depth=1, extra_bytes=INTERESTING))
        try:
            out = machine.receive(payload, now)
        except AspiaProtocolError:
            return
        assert all(isinstance(item, bytes) and item for item in out)
        if machine.done:
            return
        now += 1.0


def _handshake_seeds() -> list[bytes]:
    valid = _valid_next()
    seeds = []
    for i, make in enumerate(CHEAP_STATES):
        body = serialize(valid[make])
        seeds.append(bytes([i, 0]) + lengthed(body))
    return seeds


def check_handshake_states() -> None:
    """The target means something only if every state factory stops where it claims and its seal
    function produces input that state accepts (a wrong key would make every input an AEAD failure)."""
    valid = _valid_next()
    for original, make in zip(CHEAP_STATES, HANDSHAKE_STATES, strict=True):
        machine, seal, message_type = make()
        message = valid[original]
        assert isinstance(message, message_type) and not machine.done, original.__name__
        machine.receive(seal(serialize(message)), 2.0)
        assert machine.done is (message_type in (kx.SessionResponse, kx.SessionChallenge))


# ---------------------------------------------------------------------------- channel
USER = make_user("admin", b"secret", sessions=3, group="1024")
ROUTER = ServerConfig(private_key=SERVER_PRIVATE, seed_key=SEED, anonymous_sessions=12, users=lookup(USER))
ANON = ClientConfig(session_type=8, identify=Identify.ANONYMOUS, server_public_key=SERVER_PUBLIC)


def _server_channel(now: float = 0.0) -> Channel:
    return Channel(ServerHandshake(ROUTER, now, cheap_random(1)), now=now, max_frame=4096)


def _client_channel(now: float = 0.0) -> Channel:
    return Channel(ClientHandshake(ANON, now, cheap_random(2)), now=now, max_frame=4096)


def _established() -> tuple[Channel, Channel]:
    server, client = _server_channel(), _client_channel()
    while True:
        to_server, to_client = b"".join(client.take_output()), b"".join(server.take_output())
        if not to_server and not to_client:
            break
        if to_server:
            server.receive_data(to_server, 0.5)
        if to_client:
            client.receive_data(to_client, 0.5)
    assert server.established and client.established
    return server, client


def channel(data: bytes) -> None:
    """The composed channel (framing + keep-alive + handshake + AEAD + channel header).

    Modes: a server or a client before authentication fed a byte stream; an established server
    fed a mix of raw bytes, keep-alive frames and messages its genuine peer sealed (arbitrary
    content and channel IDs), with timers in between.
    """
    inp = Input(data)
    mode = inp.below(3)
    now = 1.0
    try:
        if mode < 2:
            chan = _server_channel() if mode == 0 else _client_channel()
            for chunk in inp.chunks(max_chunks=6):
                now += inp.byte() / 8
                chan.receive_data(chunk, now)
                chan.take_output()
                if inp.flag():
                    chan.handle_timer(now)
            return
        server, client = _established()
        for _ in range(inp.below(8)):
            now += inp.byte() / 8
            kind = inp.below(4)
            if kind == 0:
                wire = inp.take()
            elif kind == 1:
                wire = encode_keepalive(inp.flag(), inp.take(8) or b"\x00")
            else:
                message = inp.take() or b"\x00"
                client.send(message, inp.byte() if kind == 3 else None)
                wire = b"".join(client.take_output())
            server.receive_tagged(wire, now)
            server.take_output()
            if inp.flag():
                server.handle_timer(now)
    except AspiaProtocolError:
        return


def _channel_seeds() -> list[bytes]:
    return [bytes([2, 3, 10, 2, 5]) + b"hello" + bytes([0, 10, 1, 1, 4]) + b"ping" + bytes([0]),
            bytes([0, 1, 20]) + serialize(kx.ClientHello(encryption=1))]


# ------------------------------------------------------------------- relay PeerToRelay
def peer_to_relay(data: bytes) -> None:
    """The relay's first message from a peer (length, protobuf, sealed secret) and the pairing of
    two peers that present the same key and secret, with timeouts and closes in between.

    Half of the messages are sealed to a real pool key (valid key ID, real X25519 and IV), so the
    fuzzer reaches secret opening and pairing instead of stopping at "unknown key".
    """
    inp = Input(data)
    pool = RelayKeyPool(4, expiry=60.0, random_bytes=random.Random(7).randbytes)
    keys = pool.on_connected()
    pairing: Pairing[int] = Pairing(pool, timeout=30.0, max_pending=inp.below(6) or None)
    pending: set[int] = set()
    now = 0.0
    for conn in range(inp.below(8)):
        now += inp.byte() / 4
        for gone in pairing.expired(now):
            assert gone in pending
            pending.discard(gone)
        if not pairing.add(conn, now):
            continue
        pending.add(conn)
        if inp.flag():
            key = keys[inp.below(len(keys))]
            secret = inp.take(64)
            public, sealed = seal_relay_secret(key.pair.public_bytes, key.iv, secret,
                                               random.Random(conn).randbytes)
            wire = encode_peer_to_relay(relay_peer_pb2.PeerToRelay(
                key_id=key.key_id if inp.byte() else inp.below(2**16), public_key=public, data=sealed))
        else:
            wire = inp.take()
        reader = PeerToRelayReader(max_size=512)
        message = None
        try:
            for chunk in (wire[: inp.below(len(wire) + 1)], wire):
                message = reader.feed(chunk) or message
        except AspiaProtocolError:
            pairing.remove(conn)
            pending.discard(conn)
            continue
        if message is None:
            if inp.flag():
                assert pairing.remove(conn)
                pending.discard(conn)
            continue
        try:
            paired = pairing.offer(conn, message)
        except AspiaProtocolError:
            assert conn not in pairing
            pending.discard(conn)
            continue
        if paired is not None:
            assert paired.first in pending and paired.second == conn and paired.first != conn
            assert paired.first not in pairing and conn not in pairing
            pending -= {paired.first, conn}
            PeerInfo.from_secret(inp.take(32))
    assert len(pairing) == len(pending)
    assert set(pairing.expired(now + 31.0)) == pending and len(pairing) == 0


def _peer_to_relay_seeds() -> list[bytes]:
    # two peers presenting key 0 with the same secret, both with a valid key ID
    one = bytes([1, 1]) + lengthed(b"secret", 64) + bytes([1, 0])
    return [bytes([0, 2]) + bytes([0]) + one + bytes([0]) + one]


# ----------------------------------------------------------------------- router core
_DB_DIR: Path | None = None


def _router_db() -> RouterDatabase:
    """One database per process in a private temporary folder (removed at exit)."""
    global _DB_DIR
    if _DB_DIR is None:
        _DB_DIR = Path(tempfile.mkdtemp(prefix="natrelay-fuzz-"))
        atexit.register(shutil.rmtree, _DB_DIR, True)
        admin = StoredUser("admin", "1024", b"s" * 64, b"v" * 128, 3)
        RouterDatabase.create(_DB_DIR / "router.db3", [admin])
    db = RouterDatabase.open(_DB_DIR / "router.db3")
    db._conn.execute("PRAGMA synchronous = OFF")  # fuzzing, not durability
    return db


_ENVELOPES: dict[SessionKind, type[Message]] = {
    SessionKind.HOST: router_peer_pb2.PeerToRouter,
    SessionKind.CLIENT: router_peer_pb2.PeerToRouter,
    SessionKind.RELAY: router_relay_pb2.RelayToRouter,
    SessionKind.ADMIN: router_admin_pb2.AdminToRouter,
}
_ROUTER: list[Router] = []


def _router() -> Router:
    if not _ROUTER:
        _ROUTER.append(Router(_router_db(), random.Random(3).randbytes))
    return _ROUTER[0]


def router_core(data: bytes) -> None:
    """The router's sessions, host IDs and key pool under any sequence of messages from hosts,
    clients, relays and admins, and of sessions opening and closing.

    Checked: replies go only to open sessions, disconnects name open sessions, and once every
    session is closed no key, host ID or session is left behind.
    """
    inp = Input(data)
    router = _router()
    assert not router.sessions and router.pool.total == 0
    kinds = list(SessionKind)
    address = ["127.0.0.1", "10.0.0.2", "::1"]
    for kind in kinds:  # one of each to start with
        router.open_session(kind, address[0], "admin", ASPIA_VERSION, _info(), 0.0)
    now = 1.0
    try:
        for _ in range(inp.below(12)):
            now += inp.byte()
            op = inp.below(8)
            if op == 0:
                router.open_session(kinds[inp.choose(kinds)], address[inp.choose(address)],
                                    "admin", ASPIA_VERSION, _info(), now)
                continue
            if op == 1 and router.sessions:
                router.close_session(sorted(router.sessions)[inp.below(len(router.sessions))])
                continue
            if not router.sessions:
                continue
            session = router.sessions[sorted(router.sessions)[inp.below(len(router.sessions))]]
            envelope = _ENVELOPES[session.kind]
            payload = inp.take() if op == 2 else build(envelope, inp, extra_bytes=INTERESTING)
            actions = router.handle(session.session_id, payload, now)
            for to, message in actions.send:
                assert to in router.sessions, (to, message)
            for gone in actions.disconnect:
                assert gone in router.sessions
    finally:
        for session_id in list(router.sessions):
            router.close_session(session_id)
    assert router.pool.total == 0 and not router._host_index


def _info() -> SessionInfo:
    return SessionInfo(os_name="Linux")


def _router_core_seeds() -> list[bytes]:
    pool = router_relay_pb2.RelayToRouter(key_pool=router_relay_pb2.RelayKeyPool(
        peer_host="127.0.0.1", peer_port=7000, key=[router_common_pb2.RelayKey(
            key_id=1, type=router_common_pb2.RelayKey.TYPE_X25519,
            encryption=router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305,
            public_key=b"\x01" * 32, iv=bytes(12))]))
    request = router_peer_pb2.PeerToRouter(connection_request=router_peer_pb2.ConnectionRequest(host_id=1))
    return [bytes([3, 1, 2, 2]) + lengthed(serialize(pool)) + bytes([1, 2, 1]) + lengthed(serialize(request))]


# --------------------------------------------------------------------- peers' router side
def router_session(data: bytes) -> None:
    """A host's and a client's view of the router (host IDs, connection offers), fed anything."""
    inp = Input(data)
    try:
        if inp.flag():
            host = HostRouterSession(inp.take(64))
            host.start()
            for _ in range(inp.below(6)):
                raw = inp.take() if inp.flag() else build(router_peer_pb2.RouterToPeer, inp,
                                                          extra_bytes=INTERESTING)
                host.receive(raw)
        else:
            client = ClientRouterSession()
            for _ in range(inp.below(6)):
                if inp.flag():
                    with contextlib.suppress(ValueError):
                        client.request(inp.below(2**16))
                raw = inp.take() if inp.flag() else build(router_peer_pb2.RouterToPeer, inp,
                                                          extra_bytes=INTERESTING)
                before = client.outstanding
                offers = client.receive(raw)
                assert client.outstanding == before - len(offers) >= 0
    except AspiaProtocolError:
        return


def _router_session_seeds() -> list[bytes]:
    offer = router_peer_pb2.RouterToPeer(connection_offer=router_peer_pb2.ConnectionOffer())
    offer.connection_offer.peer_role = 1  # type: ignore[assignment]
    return [bytes([0, 1, 1, 0, 1]) + lengthed(serialize(offer)), bytes([1, 0, 1, 1]) + bytes([5, 1, 2, 3])]


TARGETS: tuple[Target, ...] = (
    Target("aspia_framing", framing, _framing_seeds, "varint frames, keep-alive, channel header"),
    Target("aspia_messages", messages, _message_seeds, "every protobuf type and its post-parse checks"),
    Target("aspia_handshake", handshake, _handshake_seeds, "both handshake sides in every state"),
    Target("aspia_channel", channel, _channel_seeds, "composed channel before and after authentication"),
    Target("aspia_peer_to_relay", peer_to_relay, _peer_to_relay_seeds,
           "the relay's PeerToRelay reading, secret opening and pairing"),
    Target("aspia_router_core", router_core, _router_core_seeds, "the router's session core"),
    Target("aspia_router_session", router_session, _router_session_seeds,
           "host and client sessions with the router"),
)

