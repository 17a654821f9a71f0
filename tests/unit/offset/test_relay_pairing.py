"""The Offset relay's pairing rules (spec §7.2-7.7), with fake time and no sockets."""

from __future__ import annotations

from natrelay.offset.relay import CloseConnection, NotifyListener, RelayPairing, SpliceTunnel

A, B, C = b"A" * 32, b"B" * 32, b"C" * 32


def pairing(**kw: int) -> RelayPairing:
    return RelayPairing(half_tunnel_timeout=32.0, **kw)


def test_connect_notifies_listener_and_accept_splices() -> None:
    p = pairing()
    assert p.listen(1, B) == []
    assert p.connect(2, A, B, now=0.0) == [NotifyListener(1, A)]
    assert p.half_tunnel_count == 1
    assert p.accept(3, B, A) == [SpliceTunnel(connector=2, acceptor=3)]
    assert p.half_tunnel_count == 0
    assert p.next_deadline() is None


def test_connect_to_absent_key_is_closed() -> None:
    p = pairing()
    (action,) = p.connect(2, A, B, now=0.0)
    assert isinstance(action, CloseConnection) and action.conn == 2
    assert "not listening" in action.reason


def test_accept_requires_listening_identity_and_pending_connector() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=0.0)
    # C is not listening: its Accept is refused even though A is pending on B.
    assert p.accept(3, C, A) == [CloseConnection(3, "accept from a key that is not listening")]
    # B has nothing pending from C.
    assert p.accept(4, B, C) == [CloseConnection(4, "accept with no pending connection from that key")]
    assert p.half_tunnel_count == 1


def test_reject_closes_connector_and_unknown_reject_is_ignored() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=0.0)
    p.connect(5, C, B, now=0.0)
    assert p.reject(1, b"Z" * 32) == []
    assert p.reject(1, A) == [CloseConnection(2, "rejected by the listener")]
    # Only the listen connection may reject: a reject arriving on another conn does nothing.
    assert p.reject(2, C) == []
    assert p.half_tunnel_count == 1


def test_half_tunnel_expires_after_timeout() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=10.0)
    assert p.next_deadline() == 42.0
    assert p.expire(41.9) == []
    assert p.expire(42.0) == [CloseConnection(2, "connect not accepted in time")]
    assert p.accept(3, B, A) == [CloseConnection(3, "accept with no pending connection from that key")]
    assert p.next_deadline() is None


def test_connector_gone_is_forgotten_at_once() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=0.0)
    assert p.connection_closed(2) == []
    assert p.half_tunnel_count == 0
    assert p.next_deadline() is None
    assert p.accept(3, B, A)[0] == CloseConnection(3, "accept with no pending connection from that key")


def test_listener_closing_drops_its_pending_connectors() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=0.0)
    p.connect(3, C, B, now=0.0)
    actions = p.connection_closed(1)
    assert sorted(a.conn for a in actions if isinstance(a, CloseConnection)) == [2, 3]
    assert not p.is_listening(B)
    # A new Listen is accepted straight away.
    assert p.listen(4, B) == []
    assert p.listener_conn(B) == 4


def test_second_listen_replaces_first() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=0.0)
    actions = p.listen(5, B)
    closed = {a.conn for a in actions if isinstance(a, CloseConnection)}
    assert closed == {1, 2}
    assert p.listener_conn(B) == 5
    # The old listen conn closing later must not remove the new listener.
    assert p.connection_closed(1) == []
    assert p.listener_conn(B) == 5


def test_several_pending_from_same_key_pair_in_arrival_order() -> None:
    p = pairing()
    p.listen(1, B)
    assert p.connect(2, A, B, now=0.0) == [NotifyListener(1, A)]
    assert p.connect(3, A, B, now=1.0) == [NotifyListener(1, A)]
    assert p.accept(10, B, A) == [SpliceTunnel(2, 10)]
    assert p.accept(11, B, A) == [SpliceTunnel(3, 11)]
    assert p.accept(12, B, A) == [CloseConnection(12, "accept with no pending connection from that key")]


def test_limits() -> None:
    p = pairing(max_listeners=1, max_pending_per_listener=2)
    p.listen(1, B)
    (refused,) = p.listen(2, C)
    assert isinstance(refused, CloseConnection) and refused.conn == 2 and "limit" in refused.reason
    # Replacing one's own listener is not a new listener.
    p.listen(3, B)
    assert p.listener_conn(B) == 3
    p.connect(4, A, B, now=0.0)
    p.connect(5, C, B, now=0.0)
    (refused,) = p.connect(6, A, B, now=0.0)
    assert isinstance(refused, CloseConnection) and refused.conn == 6 and "limit" in refused.reason
    # A slot frees up once a pending connector is resolved.
    p.reject(3, A)
    assert p.connect(7, A, B, now=0.0) == [NotifyListener(3, A)]


def test_expire_skips_resolved_entries_and_keeps_order() -> None:
    p = pairing()
    p.listen(1, B)
    p.connect(2, A, B, now=0.0)
    p.connect(3, C, B, now=5.0)
    p.accept(9, B, A)
    assert p.next_deadline() == 37.0
    assert p.expire(100.0) == [CloseConnection(3, "connect not accepted in time")]


def test_listeners_are_counted_against_their_source() -> None:
    p = pairing(max_listeners=100, max_listeners_per_source=2)
    keys = [bytes([n]) * 32 for n in range(10)]
    assert p.listen(1, keys[0], "10.0.0.1") == [] and p.listen(2, keys[1], "10.0.0.1") == []
    (refused,) = p.listen(3, keys[2], "10.0.0.1")
    assert isinstance(refused, CloseConnection) and refused.conn == 3
    assert refused.limit == "listeners_per_ip" and "10.0.0.1" in refused.reason
    assert p.listen(4, keys[3], "10.0.0.2") == []  # another source has its own quota
    # A key that listens again from the same source replaces itself within the quota.
    replaced = p.listen(5, keys[0], "10.0.0.1")
    assert CloseConnection(1, "listener replaced by a new Listen from the same key") in replaced
    assert p.listeners_from("10.0.0.1") == 2
    # Moving a key to another source counts it there, and frees its old slot.
    assert p.listen(6, keys[1], "10.0.0.3") != [CloseConnection(6, "x")]
    assert p.listeners_from("10.0.0.1") == 1 and p.listeners_from("10.0.0.3") == 1
    for conn in (5, 4, 6):
        p.connection_closed(conn)
    assert p.listener_count == 0 and p.listener_sources == 0


def test_a_refused_replacement_keeps_the_old_listener_and_its_slot() -> None:
    p = pairing(max_listeners=100, max_listeners_per_source=1)
    p.listen(1, A, "10.0.0.1")
    p.listen(2, B, "10.0.0.2")
    (refused,) = p.listen(3, A, "10.0.0.2")  # A moves to a source whose quota is full
    assert refused.limit == "listeners_per_ip" and refused.conn == 3
    assert p.listener_conn(A) == 1 and p.listeners_from("10.0.0.1") == 1
    assert p.listeners_from("10.0.0.2") == 1
    (again,) = p.listen(4, C, "10.0.0.1")  # the slot A keeps is still taken
    assert again.limit == "listeners_per_ip"


def test_a_replacement_fits_under_a_full_total() -> None:
    p = pairing(max_listeners=1)
    p.listen(1, B, "s")
    assert p.listen(2, B, "t") == [CloseConnection(1, "listener replaced by a new Listen from the same key")]
    assert p.listener_conn(B) == 2 and p.listener_count == 1 and p.listeners_from("s") == 0


def test_limit_closes_name_their_limit_and_others_do_not() -> None:
    p = pairing(max_listeners=1, max_pending_per_listener=1)
    p.listen(1, B, "s")
    (total,) = p.listen(2, C, "t")
    assert isinstance(total, CloseConnection) and total.limit == "listeners"
    p.connect(3, A, B, now=0.0)
    (pending,) = p.connect(4, A, B, now=0.0)
    assert isinstance(pending, CloseConnection) and pending.limit == "pending_per_listener"
    (absent,) = p.connect(5, A, C, now=0.0)
    assert isinstance(absent, CloseConnection) and absent.limit is None
