"""Key pool lifecycle and the MaxPeerCount accounting, with fake time (spec §7.1, §7.2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.aspia.proto import router_common_pb2
from natrelay.aspia.relay.keypool import KeyPool
from tests.unit.aspia.helpers import seeded_random


def _pool(max_peer_count: int = 5, expiry: float = 30.0) -> KeyPool:
    return KeyPool(max_peer_count, expiry=expiry, random_bytes=seeded_random(7))


def _capacity(pool: KeyPool) -> int:
    return len(pool) + pool.active


def test_connect_announces_max_peer_count_keys_with_ids_from_zero() -> None:
    pool = _pool(5)
    keys = pool.on_connected()
    assert [k.key_id for k in keys] == [0, 1, 2, 3, 4]
    proto = keys[0].to_proto()
    assert proto.type == router_common_pb2.RelayKey.TYPE_X25519
    assert proto.encryption == router_common_pb2.RelayKey.ENCRYPTION_CHACHA20_POLY1305
    assert len(proto.public_key) == 32 and len(proto.iv) == 12
    assert len({k.pair.public_bytes for k in keys}) == 5  # every key is its own pair


def test_key_ids_continue_across_reconnects_and_the_pool_is_voided_on_loss() -> None:
    pool = _pool(3)
    pool.on_connected()
    pool.on_disconnected()
    assert len(pool) == 0 and pool.get(0) is None
    assert [k.key_id for k in pool.on_connected()] == [3, 4, 5]


def test_reconnect_counts_active_sessions_and_never_goes_negative() -> None:
    pool = _pool(3)
    pool.on_connected()
    assert pool.pair(0) and pool.pair(1)
    assert len(pool.on_connected()) == 1
    pool.max_peer_count = 1  # e.g. lowered while two sessions run (spec §12 bug 2)
    assert pool.on_connected() == []


def test_used_key_expires_after_thirty_seconds_and_is_replaced() -> None:
    pool = _pool(2)
    pool.on_connected()
    pool.key_used(1, now=100.0)
    assert pool.next_deadline() == 130.0
    assert pool.expire(129.9) == ([], [])
    expired, fresh = pool.expire(130.0)
    assert expired == [1] and [k.key_id for k in fresh] == [2]
    assert pool.get(1) is None and _capacity(pool) == 2
    assert pool.next_deadline() is None


def test_paired_key_does_not_expire() -> None:
    pool = _pool(2)
    pool.on_connected()
    pool.key_used(0, 0.0)
    assert pool.pair(0)
    assert pool.next_deadline() is None
    assert pool.expire(1000.0) == ([], [])
    assert not pool.pair(0)  # a key pairs once


def test_unknown_or_repeated_key_used_is_ignored() -> None:
    pool = _pool(2)
    pool.on_connected()
    pool.key_used(99, 0.0)
    assert pool.next_deadline() is None
    pool.key_used(0, 0.0)
    pool.key_used(0, 20.0)  # must not push the deadline back
    assert pool.next_deadline() == 30.0


def test_session_end_gives_the_slot_back_only_while_connected() -> None:
    pool = _pool(2)
    pool.on_connected()
    assert pool.pair(0) and pool.pair(1)
    assert len(pool) == 0 and pool.active == 2
    assert [k.key_id for k in pool.session_ended()] == [2]
    assert _capacity(pool) == 2
    pool.on_disconnected()
    assert pool.session_ended() == []  # nobody to tell: the reconnect announces it (spec §12 bug 6)
    assert pool.active == 0
    assert len(pool.on_connected()) == 2


def test_expiry_while_disconnected_is_void() -> None:
    pool = _pool(2)
    pool.on_connected()
    pool.key_used(0, 0.0)
    pool.on_disconnected()
    assert pool.next_deadline() is None and pool.expire(100.0) == ([], [])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from("pueEdc"), max_size=40))
def test_capacity_invariant_holds_through_any_sequence(events: list[str]) -> None:
    """pool keys + active sessions == MaxPeerCount whenever connected, whatever happens in between."""
    pool = _pool(4, expiry=15.0)
    pool.on_connected()
    now = 0.0
    for event in events:
        now += 10.0
        ids = sorted(k for k in range(1000) if k in pool)
        if event == "p" and ids:
            assert pool.pair(ids[0])
        elif event == "e" and pool.active:
            pool.session_ended()
        elif event == "u" and ids:
            pool.key_used(ids[-1], now)
        elif event == "d":
            pool.on_disconnected()
        elif event == "c":
            pool.on_connected()
        pool.expire(now)
        assert pool.active >= 0
        if pool.connected:
            assert _capacity(pool) == 4
        else:
            assert len(pool) == 0
