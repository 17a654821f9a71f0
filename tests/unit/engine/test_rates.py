"""The one token bucket (events refused when empty, bytes into debt) and per-key rates, fake time."""

from __future__ import annotations

import pytest

from natrelay.engine.rates import KeyedRate, TokenBucket


def test_events_take_all_or_nothing_and_refill_at_the_rate() -> None:
    bucket = TokenBucket(1.0, 3, 0.0)
    assert [bucket.try_take(0.0) for _ in range(4)] == [True, True, True, False]
    assert not bucket.try_take(0.5)
    assert bucket.try_take(1.0)
    assert not bucket.try_take(1.0)
    assert not bucket.try_take(-100.0)  # a clock stepping back mints nothing
    assert bucket.try_take(5.0) and bucket.try_take(5.0) and bucket.try_take(5.0) and not bucket.try_take(5.0)


def test_float_refill_to_just_under_one_token_counts_as_one() -> None:
    bucket = TokenBucket(3 / 60, 3, 0.0)  # 3 a minute: 0.05 a second is no exact float
    for _ in range(3):
        assert bucket.try_take(0.0)
    assert bucket.try_take(20.0)


def test_give_back_never_exceeds_the_burst_and_full_reports_refill() -> None:
    bucket = TokenBucket(1.0, 2, 0.0)
    assert bucket.try_take(0.0) and not bucket.full(0.0)
    assert bucket.full(1.0) and not bucket.full(0.5)
    bucket.give_back(0.0)
    bucket.give_back(0.0)
    assert bucket.tokens == 2


def test_bytes_go_into_debt_and_say_how_long_to_wait() -> None:
    b = TokenBucket(100.0, 200.0, 0.0)
    assert b.take(150, 0.0) == 0.0
    assert b.take(100, 0.0) == pytest.approx(0.5)
    assert not b.try_take(0.25)  # in debt: no event fits either
    assert b.delay(0.5) == 0.0


def test_keyed_rates_are_per_key_bounded_and_pruned() -> None:
    rates: KeyedRate[str] = KeyedRate(per_minute=60, burst=2, max_keys=3)
    assert rates.allow("a", 0) and rates.allow("a", 0) and not rates.allow("a", 0)
    assert rates.allow("b", 0)  # another key is not affected
    for key in "cde":
        rates.allow(key, 0)
    assert len(rates) == 3
    assert rates.prune(100.0) == 3 and len(rates) == 0
    off: KeyedRate[str] = KeyedRate(per_minute=0, burst=0)
    assert all(off.allow("x", 0) for _ in range(1000)) and len(off) == 0


def test_refund_gives_the_token_back_and_refilled_keys_are_forgotten_as_others_come() -> None:
    rates: KeyedRate[str] = KeyedRate(per_minute=60, burst=1)
    assert rates.allow("a", 0.0) and not rates.allow("a", 0.0)
    rates.refund("a", 0.0)
    assert rates.allow("a", 0.0)
    rates.refund("unknown", 0.0)  # a key without a bucket is full already: nothing to store
    assert len(rates) == 1
    for i in range(100):  # "a" refilled long ago: it goes as other keys arrive, without a sweep
        assert rates.allow(f"k{i}", 10.0 + i * 2)
    assert len(rates) <= 3


def test_invalid_rates_are_refused() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0, 1, 0.0)
    with pytest.raises(ValueError):
        KeyedRate(-1, 1)
