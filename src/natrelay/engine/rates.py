"""Token buckets, sans-IO (every call takes ``now`` in seconds): one bucket for every rate limit.

Why one class: the router counted requests with one token bucket, the Aspia relay's flood guard
new connections with a second, and the forwarding engine bytes with a third; they differed only
in how a refused event is handled. A :class:`TokenBucket` offers both:

* :meth:`TokenBucket.try_take` — events that are refused when the bucket is empty (a connection,
  a request): all or nothing;
* :meth:`TokenBucket.take` — amounts that already happened (bytes forwarded): the bucket goes
  into debt and says how long the caller must pause until it is paid.

Why token buckets: they allow the short bursts honest peers make (a client opening a few
connections at once, a host reconnecting) while bounding the sustained rate.

:class:`KeyedRate` is one bucket per key (source address, account, host ID). The keys come from
the network, so the table is bounded: a bucket that has refilled carries no information and is
forgotten (two of the least recently used are checked on every event, so memory follows the
active keys without a sweep; :meth:`KeyedRate.prune` sweeps all), and past ``max_keys`` the least
recently used goes, which can only favour the peer it belonged to, never lock anyone out.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["KeyedRate", "TokenBucket"]

K = TypeVar("K", bound=Hashable)

_EPSILON = 1e-9
"""Slack for ``try_take``: a bucket refilled to 0.9999999999 tokens by float arithmetic holds one."""


class TokenBucket:
    """``rate`` tokens per second, at most ``burst`` saved up; starts full."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def refill(self, now: float) -> None:
        # A clock that steps back must neither mint nor burn tokens.
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def try_take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False (nothing spent) otherwise."""
        self.refill(now)
        if self.tokens + _EPSILON < cost:
            return False
        self.tokens -= cost
        return True

    def give_back(self, now: float, cost: float = 1.0) -> None:
        """Return tokens spent on an event that turned out legitimate (never above ``burst``)."""
        self.refill(now)
        self.tokens = min(self.burst, self.tokens + cost)

    def take(self, n: float, now: float) -> float:
        """Spend ``n`` tokens, into debt if need be; how long until the bucket is out of debt."""
        self.refill(now)
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def delay(self, now: float) -> float:
        """Seconds until the bucket is out of debt (0 if it is not in debt)."""
        self.refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        """Whether the bucket has refilled completely by ``now`` (it then holds no state)."""
        return self.tokens + max(0.0, now - self.updated) * self.rate >= self.burst


class KeyedRate(Generic[K]):
    """At most ``per_minute`` events per key per minute, bursts of ``burst``; 0 turns it off.

    A key without a bucket is a full bucket; ``allow`` with the limit off stores nothing.
    """

    __slots__ = ("_buckets", "burst", "max_keys", "per_minute")

    def __init__(self, per_minute: float, burst: float, max_keys: int = 65_536) -> None:
        if per_minute < 0 or burst < 0 or max_keys < 1:
            raise ValueError("per_minute and burst must be >= 0 and max_keys >= 1")
        self.per_minute = per_minute
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self._buckets: dict[K, TokenBucket] = {}
        """Least recently used first (a dict keeps insertion order; a touched key is re-inserted)."""

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def allow(self, key: K, now: float) -> bool:
        """Whether one more event for ``key`` fits its rate; counts it if so."""
        if not self.enabled:
            return True
        self._forget_refilled(now)
        return self._touch(key, now).try_take(now)

    def refund(self, key: K, now: float) -> None:
        """Give back the token of an event that proved legitimate (e.g. a connection that
        authenticated), so heavy legitimate use is limited by its credentials, not the rate."""
        bucket = self._buckets.get(key)
        if bucket is not None:
            self._touch(key, now).give_back(now)

    def prune(self, now: float) -> int:
        """Forget every bucket that has refilled completely; returns how many."""
        full = [key for key, bucket in self._buckets.items() if bucket.full(now)]
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)

    def _touch(self, key: K, now: float) -> TokenBucket:
        buckets = self._buckets
        bucket = buckets.pop(key, None)
        if bucket is None:
            bucket = TokenBucket(self.per_minute / 60.0, self.burst, now)
        buckets[key] = bucket  # most recently used goes last
        while len(buckets) > self.max_keys:
            del buckets[next(iter(buckets))]
        return bucket

    def _forget_refilled(self, now: float) -> None:
        """Drop the two least recently used buckets if they have refilled (they would be fresh
        ones anyway): constant work per event, and memory follows the keys still active."""
        buckets = self._buckets
        for key in list(itertools.islice(buckets, 2)):
            if buckets[key].full(now):
                del buckets[key]
