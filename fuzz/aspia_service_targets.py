"""Fuzz targets of the Aspia family's services: the relay's PeerToRelay reading and pairing, the
router's session core, and the peers' sessions with the router.

These drive whole state machines above the channel (``fuzz/aspia_targets.py`` holds the protocol
layers below them: framing, messages, handshake, channel) and need a database and key pools;
kept apart so each file reads as one layer. Only
:class:`natrelay.aspia.errors.AspiaProtocolError` may escape a target.
"""

from __future__ import annotations

import atexit
import contextlib
import random
import shutil
import tempfile
from pathlib import Path

from google.protobuf.message import Message

from fuzz.aspia_targets import INTERESTING
from fuzz.harness import Input, Target, lengthed
from fuzz.protobuf_gen import build
from natrelay.aspia.crypto import seal_relay_secret
from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.handshake import (
    SessionInfo,
)
from natrelay.aspia.messages import (
    ASPIA_VERSION,
    PeerToRelayReader,
    encode_peer_to_relay,
    serialize,
)
from natrelay.aspia.peer.router_session import ClientRouterSession, HostRouterSession
from natrelay.aspia.proto import (
    relay_peer_pb2,
    router_admin_pb2,
    router_common_pb2,
    router_peer_pb2,
    router_relay_pb2,
)
from natrelay.aspia.relay.keypool import KeyPool as RelayKeyPool
from natrelay.aspia.relay.pairing import Pairing, PeerInfo
from natrelay.aspia.router.admin import Router
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.sessions import SessionKind


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
    Target("aspia_peer_to_relay", peer_to_relay, _peer_to_relay_seeds,
           "the relay's PeerToRelay reading, secret opening and pairing"),
    Target("aspia_router_core", router_core, _router_core_seeds, "the router's session core"),
    Target("aspia_router_session", router_session, _router_session_seeds,
           "host and client sessions with the router"),
)
