"""Byte-rate limits for forwarded sessions that never copy bytes through Python.

A :class:`TokenBucket` (sans-IO: callers pass ``now``) counts what a session delivered; when a bucket
is in debt the session stops reading both peers (:meth:`ForwardSession.pause_reading`) until the debt
is paid, so the peers' TCP windows close exactly as with backpressure and splice(2) keeps moving the
bytes. A session may carry its own bucket and share a global one; every session has its *own* bucket
(strelaysrv's Debian build shared one between all sessions, so one busy session starved the rest).

Accuracy: a session can overshoot by what one wake-up moves (a few pipe-fulls); the debt carries
over, so the average rate holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from natrelay.engine.session import ForwardSession

__all__ = ["SessionThrottle", "TokenBucket"]


class TokenBucket:
    """``rate`` tokens (bytes) per second, at most ``burst`` saved up; may go into debt."""

    __slots__ = ("burst", "rate", "tokens", "updated")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst <= 0:
            raise ValueError("rate and burst must be positive")
        self.rate = rate
        self.burst = burst
        self.tokens = burst
        self.updated = now

    def _refill(self, now: float) -> None:
        if now > self.updated:
            self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
            self.updated = now

    def take(self, n: int, now: float) -> float:
        """Spend ``n`` tokens; return how long until the bucket is out of debt (0 if it is not)."""
        self._refill(now)
        self.tokens -= n
        return self.delay(now)

    def delay(self, now: float) -> float:
        self._refill(now)
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


class SessionThrottle:
    """Holds one session to its buckets: pause when any is in debt, resume when all are paid."""

    __slots__ = ("_buckets", "_handle", "_loop", "_session")

    def __init__(self, loop: asyncio.AbstractEventLoop, session: ForwardSession,
                 buckets: Sequence[TokenBucket]) -> None:
        self._loop = loop
        self._session = session
        self._buckets = tuple(buckets)
        self._handle: asyncio.TimerHandle | None = None
        session.meter = self._meter

    @property
    def paused(self) -> bool:
        return self._handle is not None

    def _meter(self, session: ForwardSession, n: int) -> None:
        now = self._loop.time()
        wait = max(b.take(n, now) for b in self._buckets)
        if wait > 0 and self._handle is None:
            session.pause_reading()
            self._handle = self._loop.call_later(wait, self._check)

    def _check(self) -> None:
        self._handle = None
        session = self._session
        if session.is_closed:
            return
        now = self._loop.time()
        wait = max(b.delay(now) for b in self._buckets)
        if wait > 0:
            self._handle = self._loop.call_later(wait, self._check)
        else:
            session.resume_reading()

    def cancel(self) -> None:
        """The session ended: drop the pending resume."""
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._session.meter = None
