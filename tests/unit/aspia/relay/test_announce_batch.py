"""Replacement keys travel in batches only while the router holds plenty, with fake time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.aspia.relay.keypool import AnnounceBatch, KeyPool, PoolKey
from tests.unit.aspia.helpers import seeded_random


def _pool(max_peer_count: int) -> KeyPool:
    pool = KeyPool(max_peer_count, random_bytes=seeded_random(3))
    pool.on_connected()
    return pool


def _end_session(pool: KeyPool, key_id: int) -> list[PoolKey]:
    """Two peers pair on ``key_id`` and their session ends: one replacement key."""
    assert pool.pair(key_id)
    return pool.session_ended()


def _ids(keys: list[PoolKey]) -> list[int]:
    return [k.key_id for k in keys]


def test_a_pool_smaller_than_the_low_stock_announces_at_once_as_the_original() -> None:
    pool = _pool(5)
    batch = AnnounceBatch(pool)  # default low stock (256) is above anything this pool can hold
    keys = _end_session(pool, 4)
    assert batch.add(keys, 100.0) == keys
    assert batch.next_deadline() is None and len(batch) == 0


def test_keys_are_held_until_the_delay_while_the_router_has_plenty() -> None:
    pool = _pool(10)
    batch = AnnounceBatch(pool, delay=0.1, low_stock=4)
    first = _end_session(pool, 9)
    second = _end_session(pool, 8)
    assert batch.add(first, 100.0) == []
    assert batch.add(second, 100.05) == []
    assert batch.router_stock == 8
    assert batch.next_deadline() == pytest.approx(100.1)  # from the first key held, not the last
    assert batch.due(100.09) == []
    assert _ids(batch.due(100.1)) == _ids(first + second)
    assert batch.next_deadline() is None and batch.due(200.0) == []


def test_a_router_running_low_gets_everything_held_at_once() -> None:
    pool = _pool(10)
    batch = AnnounceBatch(pool, delay=0.1, low_stock=5)
    held = _end_session(pool, 9)
    assert batch.add(held, 100.0) == []
    for key_id in range(5):  # the router hands out five of the nine keys it knows
        pool.key_used(key_id, 100.01)
    assert batch.router_stock == 4
    fresh = _end_session(pool, 0)  # one of them pairs and its session ends
    assert _ids(batch.add(fresh, 100.02)) == _ids(held + fresh)
    assert batch.next_deadline() is None and len(batch) == 0


def test_a_full_batch_goes_without_waiting() -> None:
    pool = _pool(10)
    batch = AnnounceBatch(pool, delay=5.0, low_stock=1, max_batch=3)
    assert batch.add(_end_session(pool, 9), 1.0) == []
    assert batch.add(_end_session(pool, 8), 1.0) == []
    assert len(batch.add(_end_session(pool, 7), 1.0)) == 3


def test_keys_voided_by_a_lost_router_link_are_never_announced() -> None:
    pool = _pool(10)
    batch = AnnounceBatch(pool, delay=0.1, low_stock=2)
    assert batch.add(_end_session(pool, 9), 1.0) == []
    pool.on_disconnected()
    assert batch.due(2.0) == []
    # A new link announces a whole fresh pool; the controller clears the batch for it.
    pool.on_connected()
    batch.clear()
    assert batch.next_deadline() is None and batch.take() == []


def test_bad_settings_are_refused() -> None:
    pool = _pool(1)
    for kwargs in ({"delay": -1.0}, {"low_stock": -1}, {"max_batch": 0}):
        with pytest.raises(ValueError):
            AnnounceBatch(pool, **kwargs)


_EVENTS = st.lists(st.tuples(st.sampled_from(["use", "end", "tick", "drop"]), st.integers(0, 40)),
                   max_size=80)


@settings(max_examples=150, deadline=None)
@given(events=_EVENTS, low_stock=st.integers(0, 12), max_peer_count=st.integers(1, 24))
def test_every_key_reaches_the_router_once_and_holding_never_starves_it(
        events: list[tuple[str, int]], low_stock: int, max_peer_count: int) -> None:
    """Whatever happens, keys are held only while the router keeps ``low_stock`` to hand out, no
    key is announced twice or after it was voided, and every valid key is announced by the time
    its delay is up."""
    pool = KeyPool(max_peer_count, random_bytes=seeded_random(3))
    batch = AnnounceBatch(pool, delay=0.5, low_stock=low_stock, max_batch=8)
    first = pool.on_connected()
    made = {k.key_id for k in first}
    announced = set(made)  # the first pool goes out on connect, never through the batch
    sessions: list[int] = []
    now = 0.0

    def send(keys: list[PoolKey]) -> None:
        for key in keys:
            assert key.key_id not in announced
            assert pool.get(key.key_id) is key  # never a voided key
            announced.add(key.key_id)

    for kind, n in events:
        now += 0.01 * n
        if kind == "use":
            # The router hands out one of the keys it knows; its two peers pair on it at once.
            known = sorted(k for k in announced if k in pool)
            if known:
                key_id = known[n % len(known)]
                pool.key_used(key_id, now)
                assert pool.pair(key_id)
                sessions.append(key_id)
        elif kind == "end" and sessions:
            sessions.pop(n % len(sessions))
            keys = pool.session_ended()
            made.update(k.key_id for k in keys)
            send(batch.add(keys, now))
            if batch.next_deadline() is not None:
                assert batch.router_stock >= low_stock
        elif kind == "tick":
            send(batch.due(now))
        elif kind == "drop":  # the router link is lost and made again; sessions carry on
            pool.on_disconnected()
            batch.clear()
            fresh = pool.on_connected()
            made.update(k.key_id for k in fresh)
            announced.update(k.key_id for k in fresh)
    send(batch.due(now + batch.delay))
    assert len(batch) == 0
    assert {k for k in made if k in pool} <= announced
