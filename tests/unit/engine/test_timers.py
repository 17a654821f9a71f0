"""TimerWheel: exact expiry order and lazy re-arming, checked against a plain dict model."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.engine.timers import TimerWheel


def test_expired_in_deadline_order_and_removed() -> None:
    w: TimerWheel[str] = TimerWheel()
    w.schedule("c", 3.0)
    w.schedule("a", 1.0)
    w.schedule("b", 2.0)
    assert len(w) == 3 and "a" in w
    assert w.next_deadline() == 1.0
    assert w.expired(0.5) == []
    assert w.expired(2.0) == ["a", "b"]
    assert "a" not in w and len(w) == 1
    assert w.next_deadline() == 3.0
    assert w.expired(10.0) == ["c"]
    assert w.next_deadline() is None and len(w) == 0


def test_rearm_later_does_not_push_and_still_fires_at_new_time() -> None:
    w: TimerWheel[int] = TimerWheel()
    w.schedule(1, 1.0)
    heap_before = len(w._heap)
    for t in range(2, 1000):
        w.schedule(1, float(t))
    assert len(w._heap) == heap_before  # O(1) re-arm: no heap growth
    assert w.deadline(1) == 999.0
    assert w.next_deadline() == 999.0
    assert w.expired(998.9) == []
    assert w.expired(999.0) == [1]


def test_lazily_moved_key_still_leaves_in_deadline_order() -> None:
    w: TimerWheel[int] = TimerWheel()
    w.schedule(0, 0.0)
    w.schedule(0, 1.0)  # lazy: its heap entry still says 0.0
    w.schedule(1, 0.5)
    assert w.expired(1.0) == [1, 0]


def test_rearm_earlier_fires_early_once() -> None:
    w: TimerWheel[str] = TimerWheel()
    w.schedule("k", 10.0)
    w.schedule("k", 5.0)
    assert w.next_deadline() == 5.0
    assert w.expired(6.0) == ["k"]
    # The orphaned entry at 10.0 must not resurrect the key.
    assert w.expired(11.0) == []
    assert len(w) == 0


def test_cancel_and_unknown_cancel() -> None:
    w: TimerWheel[str] = TimerWheel()
    w.cancel("nobody")
    w.schedule("x", 1.0)
    w.schedule("y", 2.0)
    w.cancel("x")
    assert "x" not in w
    assert w.next_deadline() == 2.0
    assert w.expired(5.0) == ["y"]


def test_heap_stays_proportional_to_live_keys() -> None:
    w: TimerWheel[int] = TimerWheel()
    for i in range(10_000):
        w.schedule(i, 100.0 - i * 0.001)  # each one earlier than the last: always pushes
        w.cancel(i)
    w.schedule(-1, 5.0)
    assert len(w._heap) < 200
    for i in range(1000):
        w.schedule(7, 1000.0 - i)  # earlier and earlier: pushes, orphans the previous
    assert len(w._heap) < 200
    assert w.expired(2000.0) == [7, -1]  # 7 ended at 1.0, before -1 at 5.0


ops = st.lists(
    st.tuples(
        st.sampled_from(["schedule", "cancel", "expire", "peek"]),
        st.integers(min_value=0, max_value=9),
        st.floats(min_value=0, max_value=100, allow_nan=False),
    ),
    max_size=200,
)


@settings(max_examples=300, deadline=None)
@given(ops)
def test_matches_dict_model(seq: list[tuple[str, int, float]]) -> None:
    w: TimerWheel[int] = TimerWheel()
    model: dict[int, float] = {}
    for op, key, t in seq:
        if op == "schedule":
            w.schedule(key, t)
            model[key] = t
        elif op == "cancel":
            w.cancel(key)
            model.pop(key, None)
        elif op == "expire":
            got = w.expired(t)
            want = sorted((k for k, d in model.items() if d <= t), key=lambda k: model[k])
            assert sorted(got) == sorted(want)
            # deadline order (ties may come out in either order)
            assert [model[k] for k in got] == sorted(model[k] for k in got)
            for k in got:
                del model[k]
        else:
            assert w.next_deadline() == (min(model.values()) if model else None)
        assert len(w) == len(model)
        assert all((k in w) == (k in model) for k in range(10))
