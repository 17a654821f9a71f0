"""A relay registered with several routers of a cluster: its key pool split between the links."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.aspia.relay.keypool import KeyPool
from tests.unit.aspia.helpers import seeded_random


def _pool(max_peer_count: int, links: int = 2) -> KeyPool:
    return KeyPool(max_peer_count, expiry=30.0, random_bytes=seeded_random(3), links=links)


def held(pool: KeyPool, links: int = 2) -> list[int]:
    return [pool.held_by(n) for n in range(links)]


def test_routers_get_shares_and_a_lost_router_moves_its_capacity_to_the_others() -> None:
    pool = _pool(9)
    a, b = pool.on_connected(0), pool.on_connected(1)
    assert (len(a), len(b)) == (5, 4)
    assert not {k.key_id for k in a} & {k.key_id for k in b}
    assert all(pool.owner(k.key_id) == 0 for k in a) and all(pool.owner(k.key_id) == 1 for k in b)
    moved = pool.on_disconnected(1)  # router 1 dies: its capacity goes to router 0 at once
    assert len(moved) == 4 and {pool.owner(k.key_id) for k in moved} == {0}
    assert held(pool) == [9, 0] and all(pool.get(k.key_id) is None for k in b)
    # Router 1 comes back: nothing is free until keys are used, then the split evens out.
    assert pool.on_connected(1) == []
    for key in a:
        assert pool.pair(key.key_id)
    new = [key for _ in range(5) for key in pool.session_ended()]
    assert [pool.owner(k.key_id) for k in new] == [1, 1, 1, 1, 0]  # to whoever holds fewest
    assert held(pool) == [5, 4]


def test_a_router_that_cannot_be_reached_at_start_leaves_its_share_to_the_others() -> None:
    pool = _pool(10)
    assert len(pool.on_connected(0)) == 5  # router 1 may still answer: half waits for it
    moved = pool.on_disconnected(1)  # it did not
    assert len(moved) == 5 and held(pool) == [10, 0]


def test_one_router_behaves_as_before() -> None:
    pool = _pool(6, links=1)
    assert len(pool.on_connected()) == 6
    assert pool.on_disconnected() == [] and len(pool) == 0
    assert len(pool.on_connected()) == 6


@settings(max_examples=80, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["up", "down", "pair", "end", "expire"]), st.integers(0, 2)),
                max_size=60))
def test_no_key_belongs_to_two_routers_and_capacity_is_never_exceeded(steps: list[tuple[str, int]]) -> None:
    pool = _pool(8, links=3)
    announced: dict[int, int] = {}  # key ID -> link it was announced to
    now = 0.0
    for action, link in steps:
        keys = []
        if action == "up":
            keys = pool.on_connected(link)
        elif action == "down":
            keys = pool.on_disconnected(link)
        elif action == "pair" and len(pool):
            key_id = min(k for k in announced if pool.get(k) is not None)
            assert pool.pair(key_id)
        elif action == "end" and pool.active:
            keys = pool.session_ended()
        elif action == "expire" and len(pool):
            pool.key_used(min(k for k in announced if pool.get(k) is not None), now)
            now += 31.0
            keys = pool.expire(now)[1]
        for key in keys:
            owner = pool.owner(key.key_id)
            assert key.key_id not in announced and owner is not None  # announced once, to one router
            announced[key.key_id] = owner
        assert len(pool) + pool.active <= 8
        for key_id, owner in announced.items():
            if pool.get(key_id) is not None:
                assert pool.owner(key_id) == owner
        # held_by is kept as a running count: it must always equal a count of the live keys.
        live = [owner for key_id, owner in announced.items() if pool.get(key_id) is not None]
        assert held(pool, 3) == [live.count(n) for n in range(3)]
