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
    # Router 1 comes back: no room for fresh keys; without taking keys back (no rebalance, or
    # a router that never answers) it gets keys as the others' are used.
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


def test_a_returning_router_gets_its_share_back_once_the_holder_confirms() -> None:
    pool = _pool(10)
    pool.on_connected(0)
    pool.on_connected(1)
    pool.on_disconnected(1)
    assert held(pool) == [10, 0] and pool.on_connected(1) == []
    assert pool.rebalance() == 5
    assert pool.rebalance() == 0  # already asked: not twice
    assert pool.take_withdrawals(1) == []
    asked = pool.take_withdrawals(0)
    assert len(asked) == 5 and all(pool.get(k) is not None for k in asked)  # valid until confirmed
    assert held(pool) == [10, 0]
    pool.key_used(asked[0], 0.0)  # router 0 handed one out before it saw the request
    fresh = pool.withdrawn(0, asked[1:])
    assert len(fresh) == 4 and {pool.owner(k.key_id) for k in fresh} == {1}
    assert not {k.key_id for k in fresh} & set(asked)  # fresh IDs: never announced to router 0
    assert all(pool.get(k) is None for k in asked[1:]) and pool.get(asked[0]) is not None
    assert held(pool) == [6, 4] and len(pool) == 10
    assert pool.withdrawn(0, asked) == []  # an answer to nothing asked changes nothing
    assert pool.rebalance() == 1  # the one handed out is not free: one more free key from router 0
    assert pool.withdrawn(0, pool.take_withdrawals(0)) != [] and held(pool) == [5, 5]


def test_a_router_that_never_confirms_keeps_its_keys() -> None:
    pool = _pool(6)
    pool.on_connected(0)
    pool.on_connected(1)
    pool.on_disconnected(1)
    pool.on_connected(1)
    assert pool.rebalance() == 3 and len(pool.take_withdrawals(0)) == 3
    assert held(pool) == [6, 0] and len(pool) == 6  # nothing moves without an answer
    assert pool.on_disconnected(0)  # its link drops: its keys (asked-for ones too) go to router 1
    assert held(pool) == [0, 6] and pool.withdrawn(0, [0, 1, 2]) == []


def test_one_router_never_rebalances() -> None:
    pool = _pool(6, links=1)
    pool.on_connected()
    assert pool.rebalance() == 0 and pool.take_withdrawals(0) == []


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["up", "down", "pair", "end", "use", "answer", "expire"]),
                          st.integers(0, 2)), max_size=80))
def test_no_key_belongs_to_two_routers_and_capacity_is_never_exceeded(steps: list[tuple[str, int]]) -> None:
    """A model of three routers: each holds the keys announced to it until it hands one out
    (``use``) or answers a withdrawal (``answer``, dropping what it still holds of the request)."""
    pool = _pool(8, links=3)
    announced: dict[int, int] = {}  # key ID -> link it was announced to
    router: dict[int, set[int]] = {0: set(), 1: set(), 2: set()}  # what each router may hand out
    requests: dict[int, list[list[int]]] = {0: [], 1: [], 2: []}
    handed: set[int] = set()
    for action, link in steps:
        keys = []
        if action == "up":
            router[link], requests[link] = set(), []
            keys = pool.on_connected(link)
        elif action == "down":
            router[link], requests[link] = set(), []
            keys = pool.on_disconnected(link)
        elif action == "use" and router[link]:
            key_id = max(router[link])
            router[link].discard(key_id)
            handed.add(key_id)
            pool.key_used(key_id, 0.0)
        elif action == "answer" and requests[link]:
            asked = requests[link].pop(0)
            dropped = [k for k in asked if k in router[link]]
            router[link].difference_update(dropped)
            keys = pool.withdrawn(link, dropped)
        elif action == "pair" and handed:
            key_id = min(handed)
            handed.discard(key_id)
            if pool.get(key_id) is not None:
                assert pool.pair(key_id)
        elif action == "end" and pool.active:
            keys = pool.session_ended()
        elif action == "expire" and handed:
            expired, keys = pool.expire(31.0)  # every handed-out key was used at 0.0
            assert set(expired) <= handed
            handed.difference_update(expired)
        if action == "up":
            pool.rebalance()
        for n in (0, 1, 2):
            if asked := pool.take_withdrawals(n):
                assert all(router[n] | handed >= {k} for k in asked)
                requests[n].append(asked)
        for key in keys:
            owner = pool.owner(key.key_id)
            assert key.key_id not in announced and owner is not None  # announced once, to one router
            announced[key.key_id] = owner
            router[owner].add(key.key_id)
        # Every key a router may still hand out is valid at the relay, and counted.
        for n in (0, 1, 2):
            assert all(pool.get(k) is not None and pool.owner(k) == n for k in router[n])
        assert len(pool) + pool.active <= 8
        for key_id, owner in announced.items():
            if pool.get(key_id) is not None:
                assert pool.owner(key_id) == owner
        # held_by is kept as a running count: it must always equal a count of the live keys.
        live = [owner for key_id, owner in announced.items() if pool.get(key_id) is not None]
        assert held(pool, 3) == [live.count(n) for n in range(3)]
