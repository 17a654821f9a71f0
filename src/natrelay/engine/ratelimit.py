"""Byte-rate limits for forwarded sessions that never copy bytes through Python (the asyncio side).

A :class:`~natrelay.engine.rates.TokenBucket` (sans-IO; the one bucket every rate limit uses)
counts what a session delivered; when a bucket is in debt the session stops reading both peers
(:meth:`ForwardSession.pause_reading`) until the debt is paid, so the peers' TCP windows close
exactly as with backpressure and splice(2) keeps moving the bytes. A session may carry its own
bucket and share a global one; every session has its *own* bucket (strelaysrv's Debian build
shared one between all sessions, so one busy session starved the rest).

Accuracy: a session can overshoot by what one wake-up moves (a few pipe-fulls); the debt carries
over, so the average rate holds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from natrelay.engine.rates import TokenBucket
from natrelay.engine.session import ForwardSession

__all__ = ["SessionThrottle", "TokenBucket"]


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
