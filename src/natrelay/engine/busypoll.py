"""Keep an event loop polling for a few microseconds after it forwarded something.

Why: a relay that goes to sleep in ``epoll_wait`` between the packets of a conversation pays a
wake-up for each one, and on this kind of machine (a VM whose idle cores enter sleep states) a
wake-up costs far more than the forwarding itself. Measured with
``bench/run.py --quick --subjects direct,engine,aspia --measures rtt --rounds 2`` (2026-12-04, load
< 1): a 64-byte round trip through the engine took 187 us at the median and through the Aspia relay
181 us; with the loop kept polling for 30 us after each delivery, 47 and 45 us, and 200 us of
polling gave no more. Go's scheduler, which ``strelaysrv`` runs on, spins the same way before it
parks a thread.

How: after a delivery of a message (at most ``BUSY_POLL_MAX_DELIVERY`` bytes) :meth:`BusyPoll.kick`
queues a callback with ``call_soon`` that queues itself again until ``window`` seconds have passed
since the last kick. While a callback is ready the loop (uvloop and asyncio alike) polls its
descriptors with a zero timeout instead of sleeping, so the next packet is read as soon as the
kernel has it. With a ``poll`` hook (the engine's own epoll, :mod:`natrelay.engine.poller`) the
callback polls that epoll itself in a tight loop, up to ``MAX_TURN`` at a time before it yields,
so a message is picked up by one ``epoll_wait`` on the engine's sockets instead of the loop's
``epoll_wait`` reporting the engine's epoll and the engine then asking it which socket is ready:
with the hook an Aspia round trip stayed at the loop readers' ~21 us (polling client), where the
engine's epoll without it measured 27 us. Other callbacks wait at most ``MAX_TURN`` for their turn.
The cost is bounded: at most ``window`` of one core's time per exchange of messages,
nothing at all on an idle relay or for bulk streams. ``NATRELAY_BUSY_POLL_US`` sets the window
(0 turns it off) for operators who prefer idle cores to latency.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping

__all__ = ["BUSY_POLL_ENV", "BUSY_POLL_MAX_DELIVERY", "DEFAULT_BUSY_POLL", "BusyPoll", "busy_poll_from_env"]

BUSY_POLL_ENV = "NATRELAY_BUSY_POLL_US"
DEFAULT_BUSY_POLL = 50e-6
"""Seconds of polling after the last delivery: above the 30 us that already gave the whole gain."""
MAX_BUSY_POLL_US = 10_000
MAX_TURN = 50e-6
"""Seconds one turn of the loop polls the engine's epoll before other callbacks get theirs (when the
window is longer than this, it is polled in several turns)."""
BUSY_POLL_MAX_DELIVERY = 8192
"""Only deliveries up to this size start a window: messages that an answer follows. A bulk stream
moves whole pipe-fuls per wake-up and its loop rarely sleeps; polling between its chunks only took
the cores its sender and receiver need (one session through the Aspia relay: 1,376 -> 1,243 MiB/s
and 0.44 -> 0.56 CPU s/GB on 2 shared cores with every delivery polling)."""


def busy_poll_from_env(env: Mapping[str, str]) -> float:
    """The window in seconds from ``NATRELAY_BUSY_POLL_US`` (microseconds), or the default when unset.

    Raises ValueError naming the variable and the allowed values when it is not a whole number
    0..10000.
    """
    text = env.get(BUSY_POLL_ENV, "").strip()
    if not text:
        return DEFAULT_BUSY_POLL
    try:
        micros = int(text)
    except ValueError:
        micros = -1
    if not 0 <= micros <= MAX_BUSY_POLL_US:
        raise ValueError(f"{BUSY_POLL_ENV}={text!r}: expected whole microseconds 0..{MAX_BUSY_POLL_US} "
                         f"(0 = never poll without sleeping)")
    return micros / 1e6


class BusyPoll:
    """One loop's polling window; ``window`` 0 makes :meth:`kick` do nothing."""

    __slots__ = ("_clock", "_last", "_loop", "_spinning", "closed", "poll", "window")

    def __init__(self, loop: asyncio.AbstractEventLoop, window: float,
                 clock: Callable[[], float] = time.perf_counter,
                 poll: Callable[[], object] | None = None) -> None:
        if window < 0:
            raise ValueError("the busy-poll window must be >= 0")
        self._loop = loop
        self.window = window
        self._clock = clock
        self._last = 0.0
        self._spinning = False
        self.closed = False
        self.poll = poll

    @property
    def spinning(self) -> bool:
        """A polling callback is queued (the loop will not sleep before it runs)."""
        return self._spinning

    def kick(self) -> None:
        """Something was forwarded: keep polling until ``window`` after now."""
        if not self.window or self.closed:
            return
        self._last = self._clock()
        if not self._spinning:
            self._spinning = True
            self._loop.call_soon(self._spin)

    def _spin(self) -> None:
        # Without a hook: one zero-timeout turn of the loop per call. With one: poll it here for up
        # to a window, then let the loop run what else is ready.
        poll = self.poll
        if poll is None:
            if not self.closed and self._clock() - self._last < self.window:
                self._loop.call_soon(self._spin)
            else:
                self._spinning = False
            return
        clock = self._clock
        window = self.window
        turn = min(window, MAX_TURN)
        start = clock()
        while not self.closed:
            poll()
            now = clock()
            if now - self._last >= window:
                self._spinning = False
                return
            if now - start >= turn:
                break
        if self.closed:
            self._spinning = False
            return
        self._loop.call_soon(self._spin)

    def close(self) -> None:
        """Stop polling (the next queued callback ends the chain)."""
        self.closed = True
