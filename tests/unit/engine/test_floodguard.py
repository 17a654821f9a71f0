"""The sans-IO flood guard with fake time: rates, fair pending slots, deadlines, exact counts."""

from __future__ import annotations

import itertools

import pytest

from natrelay.engine.floodguard import (
    REFUSED_PENDING_PER_IP,
    REFUSED_PENDING_TOTAL,
    REFUSED_RATE,
    FloodGuard,
    FloodLimits,
)

ids = itertools.count()


def conn() -> int:
    return next(ids)


def test_rate_refuses_past_the_bucket_and_refills_with_time() -> None:
    guard: FloodGuard[int] = FloodGuard(FloodLimits(connections_per_minute=60, max_pending=0,
                                                    max_pending_per_source=0))
    now = 100.0
    for _ in range(60):
        c = conn()
        assert guard.admit(c, "10.0.0.1", now).refused is None
        guard.remove(c)
    assert guard.admit(conn(), "10.0.0.1", now).refused == REFUSED_RATE
    assert guard.admit(conn(), "10.0.0.2", now).refused is None  # another source is unaffected
    assert guard.admit(conn(), "10.0.0.1", now + 0.5).refused == REFUSED_RATE
    assert guard.admit(conn(), "10.0.0.1", now + 1.0).refused is None  # one token per second


def test_authenticated_connections_get_their_token_back() -> None:
    """A NAT address opening many real sessions is limited by its credentials, not the rate."""
    guard: FloodGuard[int] = FloodGuard(FloodLimits(connections_per_minute=5, max_pending=0,
                                                    max_pending_per_source=0))
    for _ in range(1000):
        c = conn()
        assert guard.admit(c, "10.0.0.1", 0.0).refused is None
        assert guard.authenticated(c, 0.0)
    for _ in range(5):
        assert guard.admit(conn(), "10.0.0.1", 0.0).refused is None
    assert guard.admit(conn(), "10.0.0.1", 0.0).refused == REFUSED_RATE


def test_per_source_pending_cap() -> None:
    guard: FloodGuard[int] = FloodGuard(FloodLimits(max_pending_per_source=3, connections_per_minute=0))
    held = [conn() for _ in range(3)]
    for c in held:
        assert guard.admit(c, "10.0.0.1", 0.0).refused is None
    assert guard.admit(conn(), "10.0.0.1", 0.0).refused == REFUSED_PENDING_PER_IP
    assert guard.pending_from("10.0.0.1") == 3
    guard.remove(held[0])
    assert guard.admit(conn(), "10.0.0.1", 0.0).refused is None


def test_full_total_evicts_the_oldest_of_sources_at_least_as_large_never_a_smaller_one() -> None:
    guard: FloodGuard[int] = FloodGuard(FloodLimits(max_pending=4, max_pending_per_source=3,
                                                    connections_per_minute=0))
    a = [conn() for _ in range(3)]
    for i, c in enumerate(a):
        guard.admit(c, "10.0.0.1", float(i))
    b = conn()
    assert guard.admit(b, "10.0.0.2", 5.0).refused is None
    assert guard.pending == 4
    # A newcomer from a third address pushes out 10.0.0.1's oldest connection.
    newcomer = conn()
    decision = guard.admit(newcomer, "10.0.0.3", 6.0)
    assert decision.refused is None and decision.evicted == a[0]
    assert a[0] not in guard and newcomer in guard and guard.pending == 4
    # 10.0.0.1 (2 slots now) may not take one from 10.0.0.2 (1 slot): it is over its share.
    assert guard.admit(conn(), "10.0.0.1", 7.0).refused == REFUSED_PENDING_TOTAL
    # Sources with equal shares: the newcomer with none evicts the one with the oldest connection.
    guard2: FloodGuard[int] = FloodGuard(FloodLimits(max_pending=3, connections_per_minute=0))
    flood = [conn() for _ in range(3)]
    for i, c in enumerate(flood):
        guard2.admit(c, f"10.0.1.{i}", float(i))
    legit = conn()
    assert guard2.admit(legit, "10.0.9.9", 10.0).evicted == flood[0]
    # ...and an evicted source that comes back evicts the next oldest, not the newest (legit).
    assert guard2.admit(conn(), "10.0.1.0", 11.0).evicted == flood[1]
    assert legit in guard2
    # A host and a client behind one NAT address: its second connection gets in too.
    assert guard2.admit(conn(), "10.0.9.9", 12.0).evicted == flood[2]
    assert legit in guard2 and guard2.pending_from("10.0.9.9") == 2
    # ...but a third would put it two above the others: refused.
    assert guard2.admit(conn(), "10.0.9.9", 13.0).refused == REFUSED_PENDING_TOTAL


def test_first_message_deadline() -> None:
    guard: FloodGuard[int] = FloodGuard(FloodLimits(first_message_timeout=2.0))
    early, late, done = conn(), conn(), conn()
    guard.admit(early, "10.0.0.1", 0.0)
    guard.admit(late, "10.0.0.2", 1.0)
    guard.admit(done, "10.0.0.3", 0.5)
    guard.authenticated(done, 0.6)
    assert guard.next_deadline() == 2.0
    assert guard.expired(1.99) == []
    assert guard.expired(2.0) == [early]
    assert guard.next_deadline() == 3.0
    assert guard.expired(10.0) == [late]
    assert guard.next_deadline() is None and guard.pending == 0


def test_counts_return_to_zero_and_source_memory_is_bounded() -> None:
    guard: FloodGuard[int] = FloodGuard(FloodLimits(max_sources=100, connections_per_minute=60))
    for i in range(5000):
        c = conn()
        guard.admit(c, f"10.{i // 65536}.{i // 256 % 256}.{i % 256}", i * 0.001)
        if i % 3 == 0:
            guard.authenticated(c, i * 0.001)
        elif i % 3 == 1:
            guard.remove(c)
    assert guard.tracked_sources <= 100
    guard.expired(1e9)
    assert guard.pending == 0 and guard.next_deadline() is None
    # Refilled buckets are forgotten as new sources come and go.
    for i in range(300):
        c = conn()
        assert guard.admit(c, "192.0.2.1", 2e9 + i * 120).refused is None
        guard.remove(c)
    assert guard.tracked_sources <= 3


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        FloodLimits(max_pending=-1)
    with pytest.raises(ValueError, match="first_message_timeout"):
        FloodLimits(first_message_timeout=0)
