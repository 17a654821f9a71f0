"""The protocol-mode state machine and the session table, with fake time and fake randomness."""

from __future__ import annotations

import itertools

from natrelay.syncthing import xdr
from natrelay.syncthing.relay import Close, EndSession, ProtocolRelay, RelayConfig, Send
from natrelay.syncthing.sessions import AlreadyConnected, NotFound, Paired, SessionTable, Waiting

A, B, C = b"\xaa" * 32, b"\xbb" * 32, b"\xcc" * 32


def make(token: str = "", full: list[bool] | None = None) -> ProtocolRelay[str]:
    counter = itertools.count(1)
    flag = full if full is not None else [False]
    return ProtocolRelay(RelayConfig(session_address=bytes([127, 0, 0, 1]), session_port=22067, token=token),
                         SessionTable(60.0), lambda n: next(counter).to_bytes(n, "big"), lambda: flag[0])


def test_join_connect_invites_both_and_closes_the_requester() -> None:
    r = make()
    r.opened("a", A, 0.0)
    assert r.received("a", xdr.JoinRelayRequest(), 1.0) == [Send("a", xdr.RESPONSE_SUCCESS)]
    r.opened("b", B, 2.0)
    out = r.received("b", xdr.ConnectRequest(A), 2.0)
    assert len(out) == 3
    to_b, to_a, close = out
    assert isinstance(to_b, Send) and isinstance(to_a, Send) and close == Close("b", "invitation sent")
    inv_b, inv_a = to_b.message, to_a.message
    assert isinstance(inv_b, xdr.SessionInvitation) and isinstance(inv_a, xdr.SessionInvitation)
    assert to_b.conn == "b" and to_a.conn == "a"
    assert inv_b.from_id == A and not inv_b.server_socket
    assert inv_a.from_id == B and inv_a.server_socket
    assert inv_a.key != inv_b.key and len(inv_a.key) == 32
    assert inv_a.address == bytes([127, 0, 0, 1]) and inv_a.port == 22067
    assert r.sessions.pending_keys == 2


def test_not_found_already_connected_wrong_token_unexpected() -> None:
    r = make(token="t")
    r.opened("b", B, 0.0)
    assert r.received("b", xdr.ConnectRequest(A), 0.0) == [Send("b", xdr.RESPONSE_NOT_FOUND),
                                                            Close("b", "asked for a device that is not here")]
    r.opened("c", C, 0.0)
    assert r.received("c", xdr.ConnectRequest(b"short"), 0.0)[0] == Send("c", xdr.RESPONSE_NOT_FOUND)
    r.opened("a1", A, 0.0)
    assert r.received("a1", xdr.JoinRelayRequest("x"), 0.0)[0] == Send("a1", xdr.RESPONSE_WRONG_TOKEN)
    r.opened("a2", A, 0.0)
    assert r.received("a2", xdr.JoinRelayRequest("t"), 0.0) == [Send("a2", xdr.RESPONSE_SUCCESS)]
    r.opened("a3", A, 0.0)
    assert r.received("a3", xdr.JoinRelayRequest("t"), 0.0)[0] == Send("a3", xdr.RESPONSE_ALREADY_CONNECTED)
    assert r.received("a2", xdr.Ping(), 1.0) == [Send("a2", xdr.Pong())]
    assert r.received("a2", xdr.Pong(), 1.0) == []
    out = r.received("a2", xdr.JoinSessionRequest(b"k"), 1.0)
    assert out[0] == Send("a2", xdr.RESPONSE_UNEXPECTED_MESSAGE) and isinstance(out[1], Close)
    # A closing connection's further messages are ignored.
    assert r.received("a2", xdr.Ping(), 1.0) == []


def test_relay_full_on_join_and_on_ping_when_idle() -> None:
    full = [True]
    r = make(full=full)
    r.opened("a", A, 0.0)
    assert r.received("a", xdr.JoinRelayRequest(), 0.0)[0] == Send("a", xdr.RelayFull())
    full[0] = False
    r.opened("b", B, 0.0)
    r.received("b", xdr.JoinRelayRequest(), 0.0)
    full[0] = True
    out = r.tick(60.0)
    assert Send("b", xdr.Ping()) in out and Send("b", xdr.RelayFull()) in out


def test_pings_timeouts_and_join_deadline() -> None:
    r = make()
    r.opened("a", A, 0.0)
    r.received("a", xdr.JoinRelayRequest(), 0.0)
    r.opened("x", C, 0.0)  # never joins
    assert r.next_deadline() == 60.0
    out = r.tick(60.0)
    assert Send("a", xdr.Ping()) in out
    assert Close("x", "did not join within 60 s") in out
    r.received("a", xdr.Pong(), 100.0)
    assert r.tick(110.0) == []
    assert r.tick(120.0) == [Send("a", xdr.Ping())]
    assert r.tick(180.0) == [Send("a", xdr.Ping())]
    # Silent for the network timeout (2 min after its last message): closed.
    assert Close("a", "silent for 120 s", abort=True) in r.tick(220.0)
    assert r.joined == {}  # forgotten at once: the device may join again before the TLS shutdown ends


def test_leaving_device_ends_its_active_sessions_only() -> None:
    r = make()
    table = r.sessions
    r.opened("a", A, 0.0)
    r.received("a", xdr.JoinRelayRequest(), 0.0)
    r.opened("b", B, 0.0)
    out = r.received("b", xdr.ConnectRequest(A), 0.0)
    inv_b = out[0].message  # type: ignore[union-attr]
    inv_a = out[1].message  # type: ignore[union-attr]
    assert isinstance(inv_a, xdr.SessionInvitation) and isinstance(inv_b, xdr.SessionInvitation)
    assert r.closed("b") == []  # the requester was never joined
    w = table.join(inv_a.key, "sa")
    assert isinstance(w, Waiting)
    p = table.join(inv_b.key, "sb")
    assert isinstance(p, Paired) and (p.server, p.client) == ("sa", "sb")
    ends = r.closed("a")
    assert ends == [EndSession(p.session, ends[0].reason)]  # type: ignore[union-attr]
    assert r.joined == {}


def test_session_table_pairs_once_and_expires() -> None:
    t: SessionTable[str] = SessionTable(60.0)
    s = t.create(A, B, b"k1", b"k2", 0.0)
    assert isinstance(t.join(b"nope", "x"), NotFound)
    assert isinstance(t.join(b"k1", "c1"), Waiting)
    assert isinstance(t.join(b"k1", "c1b"), AlreadyConnected)
    assert t.leave(b"k1", "c1")  # gave up: its side is free again
    assert isinstance(t.join(b"k1", "c1c"), Waiting)
    paired = t.join(b"k2", "c2")
    assert isinstance(paired, Paired) and paired.session is s
    assert t.active == 1 and t.pending_keys == 0 and t.has_sessions(A) and t.has_sessions(B)
    assert isinstance(t.join(b"k1", "again"), NotFound)
    t.end(s)
    assert t.active == 0 and not t.has_sessions(A)
    s2 = t.create(A, B, b"k3", b"k4", 10.0)
    t.join(b"k3", "w")
    assert t.expired(69.0) == []
    assert t.expired(70.0) == [s2]
    assert t.pending_keys == 0 and t.pending == 0
