"""Token buckets for the router's rate limits, sans-IO: every call takes ``now`` (seconds).

Why token buckets: they allow the short bursts honest peers make (a client opening a few
connections at once, a host reconnecting) while bounding the sustained rate an attacker can
reach. Why a bounded, keyed table: the keys (source addresses, accounts, host IDs) come from
the network, so the table must not grow with them; a full bucket carries no information and is
dropped, and past ``max_keys`` the least recently used bucket goes (which can only favour the
peer it belonged to, never lock anyone out).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Generic, TypeVar

K = TypeVar("K")


@dataclass
class TokenBucket:
    """``capacity`` tokens, refilled at ``rate`` tokens per second; one event costs one token."""

    capacity: float
    rate: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, capacity: float, rate: float, now: float) -> TokenBucket:
        return cls(capacity, rate, capacity, now)

    def refill(self, now: float) -> None:
        # A clock that steps back (wall time) must not mint or burn tokens.
        elapsed = max(0.0, now - self.updated)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated = max(self.updated, now)

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Spend ``cost`` tokens if there are enough; False (nothing spent) otherwise."""
        self.refill(now)
        if self.tokens + 1e-9 < cost:
            return False
        self.tokens -= cost
        return True


class KeyedBuckets(Generic[K]):
    """One bucket per key (address, account, host ID), created full, bounded in number.

    ``per_minute`` is the sustained rate and ``burst`` the bucket size; ``per_minute == 0``
    turns the limit off (``allow`` always says yes and stores nothing).
    """

    def __init__(self, per_minute: float, burst: float, max_keys: int = 65_536) -> None:
        if per_minute < 0 or burst < 0 or max_keys < 1:
            raise ValueError("per_minute and burst must be >= 0 and max_keys >= 1")
        self.per_minute = per_minute
        self.burst = max(1.0, burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def allow(self, key: K, now: float) -> bool:
        """Whether one more event for ``key`` fits its rate; counts it if so."""
        if not self.enabled:
            return True
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket.full(self.burst, self.per_minute / 60.0, now)
            self._buckets[key] = bucket
            if len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
        return bucket.take(now)

    def prune(self, now: float) -> int:
        """Forget buckets that have refilled completely (they hold no state); returns how many."""
        full = []
        for key, bucket in self._buckets.items():
            bucket.refill(now)
            if bucket.tokens >= bucket.capacity:
                full.append(key)
        for key in full:
            del self._buckets[key]
        return len(full)

    def __len__(self) -> int:
        return len(self._buckets)
