"""Counted slots (total, per source, reserve) and fair slots with deadlines and eviction."""

from __future__ import annotations

import pytest

from natrelay.engine.slots import FairSlots, SlotCaps, SlotReasons, Slots

REASONS = SlotReasons("total", "per_source", "reserve")


def test_total_then_per_source_then_reserve_and_exact_counts() -> None:
    slots = Slots(SlotCaps(total=4, per_source=3, reserve=2), REASONS)
    assert slots.take("a") is None and slots.take("a") is None
    assert slots.take("a") == "reserve"  # 2 held: the last 2 are for sources holding none
    assert slots.take("b") is None and slots.take("c") is None
    assert slots.take("d") == "total"
    assert (slots.held, slots.held_by("a"), slots.sources) == (4, 2, 3)
    for source in ("a", "a", "b", "c"):
        slots.give(source)
    assert (slots.held, slots.sources) == (0, 0)
    per = Slots(SlotCaps(total=0, per_source=1), REASONS)
    assert per.take("a") is None and per.take("a") == "per_source" and per.take(None) is None
    assert per.held == 2 and per.held_by("a") == 1  # a None source takes only a total slot


def test_check_does_not_take_and_zero_means_no_cap() -> None:
    slots = Slots(SlotCaps(), REASONS)
    for _ in range(1000):
        assert slots.check("a") is None
    assert slots.held == 0
    for _ in range(1000):
        assert slots.take("a") is None
    assert slots.held_by("a") == 1000
    with pytest.raises(ValueError, match="per_source"):
        SlotCaps(per_source=-1)


def test_fair_slots_evict_the_oldest_of_a_source_holding_at_least_as_many() -> None:
    slots: FairSlots[int] = FairSlots(SlotCaps(total=3, per_source=2), REASONS)
    assert slots.take(1, "a", 10.0).refused is None and slots.take(2, "a", 11.0).refused is None
    assert slots.take(3, "a", 12.0).refused == "per_source"
    assert slots.take(4, "b", 13.0).refused is None
    decision = slots.take(5, "c", 14.0)  # full: "a" (2 slots) loses its oldest
    assert decision.refused is None and decision.evicted == 1 and 1 not in slots
    assert slots.take(6, "a", 15.0).evicted == 4  # "a" (1) evicts "b" (1): at least as many as its own
    assert slots.take(7, "c", 16.0).evicted == 2  # "c" (1) evicts the oldest of "a" (2)
    assert len(slots) == 3 and slots.held_by("a") == 1 and slots.held_by("c") == 2
    over: FairSlots[int] = FairSlots(SlotCaps(total=3, per_source=3), REASONS)
    for conn, source in ((1, "a"), (2, "a"), (3, "b")):
        over.take(conn, source, float(conn))
    assert over.take(4, "a", 4.0).refused == "total"  # no other source holds as many as "a"

def test_fair_slots_hand_deadlines_to_the_caller() -> None:
    slots: FairSlots[int] = FairSlots(SlotCaps(), REASONS)
    slots.take(1, "a", 2.0)
    slots.take(2, "b", 3.0)
    slots.take(3, "c", 1.0)
    assert slots.remove(3) == "c" and slots.remove(3) is None
    assert slots.next_deadline() == 2.0
    assert slots.expired(2.5) == [1]
    assert slots.expired(10.0) == [2] and slots.next_deadline() is None and len(slots) == 0


def test_fair_slots_sparing_equals_evict_only_the_biggest_holder() -> None:
    slots: FairSlots[int] = FairSlots(SlotCaps(total=4, per_source=3), REASONS, spare_equals=True)
    for conn, source in ((1, "a"), (2, "b"), (3, "b"), (4, "legit")):
        assert slots.take(conn, source, float(conn)).refused is None
    # "a" holds 1: it may evict only from a bigger holder ("b", 2), never the legit one (1).
    assert slots.take(5, "a", 5.0).evicted == 2
    # Now "a" 2, "b" 1, "legit" 1: "c" (0) evicts the biggest holder's oldest: "a"'s first.
    assert slots.take(6, "c", 6.0).evicted == 1
    # Everyone holds 1: a source holding 1 finds no bigger holder and is refused.
    assert slots.take(7, "b", 7.0).refused == "total" and 4 in slots and len(slots) == 4
    assert slots.sources == 4


def test_fair_slots_sparing_equals_always_pick_a_biggest_holder() -> None:
    """Random takes, removals and expiries against a plain count of who holds what."""
    import random

    rng = random.Random(8)
    slots: FairSlots[int] = FairSlots(SlotCaps(total=30, per_source=5), REASONS, spare_equals=True)
    held: dict[int, str] = {}
    for conn in range(5000):
        counts: dict[str, int] = {}
        for source in held.values():
            counts[source] = counts.get(source, 0) + 1
        action = rng.random()
        if action < 0.7:
            source = f"s{rng.randrange(12)}"
            decision = slots.take(conn, source, float(conn))
            if decision.evicted is not None:
                victim = held.pop(decision.evicted)
                assert counts[victim] == max(counts.values()) > counts.get(source, 0)
                assert decision.evicted == min(c for c, s in held.items() | {(decision.evicted, victim)}
                                               if s == victim)
            if decision.refused is None:
                held[conn] = source
            elif decision.refused == "total":
                assert max(c for s, c in counts.items() if s != source) <= counts.get(source, 0)
        elif action < 0.9 and held:
            gone = rng.choice(list(held))
            assert slots.remove(gone) == held.pop(gone)
        else:
            for gone in slots.expired(float(conn - 40)):
                held.pop(gone)
        assert len(slots) == len(held) and slots.sources == len(set(held.values()))
