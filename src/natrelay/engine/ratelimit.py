"""Token buckets for bandwidth limits: per session and per relay (global), in bytes per second.

Limits act where the bytes enter the relay: a pump whose bucket is empty stops *reading* its
source until tokens are back, so the splice fast path stays a splice (no copy through Python)
and the peer's TCP window does the waiting. A wake-up may move at most the tokens there are
(never less than one byte), so the relay is never in debt by more than nothing: over any
interval the bytes moved stay within ``rate * interval + burst``.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Burst: a tenth of a second at the rate, at least 16 KiB (so slow limits still move whole
#: segments). Small against 10 s of traffic, which keeps the limit exact within a few percent.
MIN_BURST = 16 * 1024


@dataclass(slots=True)
class TokenBucket:
    rate: float
    """Bytes per second (> 0)."""
    burst: float
    tokens: float
    stamp: float

    @classmethod
    def make(cls, rate: float, now: float, burst: float | None = None) -> TokenBucket:
        if rate <= 0:
            raise ValueError("a rate limit must be positive")
        size = max(float(MIN_BURST), rate / 10) if burst is None else burst
        return cls(float(rate), size, size, now)

    def refill(self, now: float) -> float:
        """Tokens available at ``now``."""
        if now > self.stamp:
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
        return self.tokens

    def consume(self, n: int) -> None:
        self.tokens -= n

    def wait(self, now: float) -> float:
        """Seconds until at least one byte may move (0 if it may now)."""
        tokens = self.refill(now)
        return 0.0 if tokens >= 1 else (1 - tokens) / self.rate


def quota(buckets: tuple[TokenBucket | None, TokenBucket | None], now: float) -> tuple[int, float]:
    """(bytes that may move now, seconds to wait if none may) under every bucket given."""
    allowed = float("inf")
    wait = 0.0
    for bucket in buckets:
        if bucket is not None:
            tokens = bucket.refill(now)
            allowed = min(allowed, tokens)
            if tokens < 1:
                wait = max(wait, (1 - tokens) / bucket.rate)
    if wait > 0:
        return 0, wait
    return (int(allowed) if allowed != float("inf") else -1), 0.0
