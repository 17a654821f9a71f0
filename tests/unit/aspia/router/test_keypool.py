"""The shared key pool's selection rule (spec §6.6): most keys wins, lowest ID on a tie, LIFO."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from natrelay.aspia.proto import router_common_pb2
from natrelay.aspia.router.keypool import KeyPool


def keys(*ids: int) -> list[router_common_pb2.RelayKey]:
    return [router_common_pb2.RelayKey(key_id=i, type=1, encryption=1) for i in ids]


def test_takes_the_newest_key_of_the_relay_with_most_keys() -> None:
    pool = KeyPool()
    pool.add(1, keys(0, 1, 2))
    pool.add(4, keys(*range(100)))
    taken = pool.take()
    assert taken is not None and (taken.relay_id, taken.key.key_id) == (4, 99)
    assert pool.count(4) == 99 and pool.total == 102


def test_tie_goes_to_the_lowest_session_id_and_empty_relays_leave() -> None:
    pool = KeyPool()
    pool.add(7, keys(10))
    pool.add(3, keys(20))
    first, second = pool.take(), pool.take()
    assert first is not None and second is not None
    assert (first.relay_id, second.relay_id) == (3, 7)
    assert pool.relays() == [] and pool.take() is None and pool.taken_total == 2


def test_unusable_relays_are_skipped_not_fatal() -> None:
    pool = KeyPool()
    pool.add(1, keys(0, 1, 2))
    pool.add(2, keys(5))
    taken = pool.take(lambda relay_id: relay_id != 1)
    assert taken is not None and (taken.relay_id, taken.key.key_id) == (2, 5)
    assert pool.take(lambda relay_id: relay_id != 1) is None
    assert pool.count(1) == 3


def test_removing_a_relay_drops_its_keys_only() -> None:
    pool = KeyPool()
    pool.add(1, keys(0, 1))
    pool.add(2, keys(0))
    assert pool.remove_relay(1) == 2 and pool.remove_relay(1) == 0
    assert pool.total == 1 and pool.relays() == [2]


def test_keys_are_copied_in() -> None:
    pool = KeyPool()
    original = keys(1)
    pool.add(1, original)
    original[0].key_id = 99
    taken = pool.take()
    assert taken is not None and taken.key.key_id == 1


@given(st.lists(st.tuples(st.integers(1, 6), st.integers(0, 5)), max_size=30))
def test_rule_matches_a_straightforward_model(uploads: list[tuple[int, int]]) -> None:
    pool = KeyPool()
    model: dict[int, list[int]] = {}
    next_id = 0
    for relay_id, count in uploads:
        ids = list(range(next_id, next_id + count))
        next_id += count
        pool.add(relay_id, keys(*ids))
        if ids:
            model.setdefault(relay_id, []).extend(ids)
    while model:
        relay_id = min(model, key=lambda r: (-len(model[r]), r))
        expected = model[relay_id].pop()
        if not model[relay_id]:
            del model[relay_id]
        taken = pool.take()
        assert taken is not None and (taken.relay_id, taken.key.key_id) == (relay_id, expected)
    assert pool.take() is None


def test_withdraw_drops_only_the_named_keys_still_held_and_says_which() -> None:
    pool = KeyPool()
    pool.add(1, keys(0, 1, 2, 3))
    pool.add(2, keys(2))
    taken = pool.take(lambda relay_id: relay_id == 1)  # key 3 is handed out: not the router's any more
    assert taken is not None and taken.key.key_id == 3
    assert sorted(pool.withdraw(1, [1, 3, 7, 2])) == [1, 2]
    assert pool.count(1) == 1 and pool.count(2) == 1  # relay 2's key 2 is another key
    assert pool.withdraw(1, [0]) == [0] and pool.relays() == [2]
    assert pool.withdraw(1, [0]) == [] and pool.withdraw(9, [1]) == []


def test_withdraw_looks_at_no_more_ids_than_the_limit() -> None:
    pool = KeyPool()
    pool.add(1, keys(0, 1, 2))
    assert pool.withdraw(1, [5, 6, 0, 1], limit=3) == [0]
