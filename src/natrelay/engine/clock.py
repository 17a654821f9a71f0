"""Drive a :class:`TimerWheel` from an asyncio loop with a single loop timer.

The loop's own timer heap then holds one entry for all our deadlines instead of one
per session, and re-arming (which happens on every forwarded chunk for idle
deadlines) usually touches only the wheel's dict.  Deadlines closer together than
``slack`` fire in one wake-up: idle and handshake timeouts are coarse, and waking
the loop once per 50 ms at most is what keeps 10,000 timeouts cheap.  Deadlines never
fire early, only up to ``slack`` late.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

from natrelay.engine.timers import TimerWheel

__all__ = ["WheelDriver"]

K = TypeVar("K", bound=Hashable)

_log = logging.getLogger(__name__)


class WheelDriver(Generic[K]):
    """One wheel, one ``loop.call_at`` handle, one callback for expired keys.

    ``clock`` defaults to ``loop.time``.  Tests pass a fake clock and call
    :meth:`poll` themselves; the loop timer is then armed with ``call_later`` for
    the fake delay, which is harmless because :meth:`poll` re-reads the clock.
    """

    __slots__ = ("_armed_at", "_clock", "_closed", "_fake_clock", "_handle", "_loop", "_on_expired",
                 "_slack", "wheel")

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        on_expired: Callable[[K], None],
        *,
        slack: float = 0.05,
        clock: Callable[[], float] | None = None,
    ) -> None:
        if slack < 0:
            raise ValueError("slack must not be negative")
        self.wheel: TimerWheel[K] = TimerWheel()
        self._loop = loop
        self._on_expired = on_expired
        self._slack = slack
        self._fake_clock = clock is not None
        self._clock: Callable[[], float] = clock if clock is not None else loop.time
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at: float | None = None
        self._closed = False

    def time(self) -> float:
        """The clock deadlines are expressed in."""
        return self._clock()

    def schedule(self, key: K, when: float) -> None:
        """Arm or re-arm ``key``; the loop timer moves only if ``when`` is earlier than it."""
        self.wheel.schedule(key, when)
        armed = self._armed_at
        if armed is None or when < armed:
            self._arm(when)

    def cancel(self, key: K) -> None:
        """Disarm ``key``.  The loop timer is left alone: a spurious wake-up is cheaper than re-arming."""
        self.wheel.cancel(key)

    def poll(self) -> int:
        """Fire every key that is due, then re-arm; returns how many fired.

        Called by the loop timer; tests with a fake clock call it directly.
        """
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_at = None
        if self._closed:
            return 0
        due = self.wheel.expired(self._clock())
        for key in due:
            try:
                self._on_expired(key)
            except Exception:
                # One broken callback must not stop every other timeout in the process.
                _log.exception("timer callback failed for %r", key)
        nxt = self.wheel.next_deadline()
        if nxt is not None and not self._closed and (self._armed_at is None or nxt < self._armed_at):
            self._arm(nxt)
        return len(due)

    def close(self) -> None:
        """Stop the loop timer and forget every deadline."""
        self._closed = True
        if self._handle is not None:
            self._handle.cancel()
        self._handle = None
        self._armed_at = None
        self.wheel.clear()

    def _arm(self, when: float) -> None:
        if self._closed:
            return
        if self._handle is not None:
            self._handle.cancel()
        # Fire a little late rather than early so that deadlines just behind this
        # one fire in the same wake-up.
        fire = when + self._slack
        if self._fake_clock:
            self._handle = self._loop.call_later(max(0.0, fire - self._clock()), self._on_timer)
        else:
            self._handle = self._loop.call_at(fire, self._on_timer)
        self._armed_at = when

    def _on_timer(self) -> None:
        self._handle = None
        self.poll()
