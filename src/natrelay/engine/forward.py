"""The forwarding engine: one per event loop, owning every paired session on it.

Protocol families decide who pairs with whom; once they hold two connected
sockets they call :meth:`ForwardEngine.start` and are done with bytes.  The engine
then forwards both directions with readiness callbacks on the loop (no task and
no thread per session), holds a pipe or a buffer only while a destination is
slow, half-closes each direction after everything before the EOF is delivered,
and keeps every idle deadline in one :class:`~natrelay.engine.clock.WheelDriver`.

Two ways to move bytes, chosen per engine (or per session) and passing the same
tests:

* ``"splice"`` (Linux): socket -> pipe -> socket with non-blocking ``splice(2)``,
  see :mod:`natrelay.engine.splice`.  The default where the kernel supports it.
* ``"portable"``: ``recv_into`` one buffer shared by all sessions of the engine,
  ``send`` from it, and copy only what the destination refused into a per-session
  backlog.  Idle sessions therefore hold no buffer either.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from natrelay.engine.busypoll import BusyPoll, busy_poll_from_env
from natrelay.engine.clock import WheelDriver
from natrelay.engine.poller import EpollPoller, Poller, make_poller
from natrelay.engine.ratelimit import SessionThrottle, TokenBucket
from natrelay.engine.session import (
    AGAIN,
    BLOCKED,
    BUDGET,
    EOF,
    ERROR,
    FAILED,
    ForwardSession,
    OnClose,
    Pump,
)
from natrelay.engine.splice import (
    DEFAULT_PIPE_SIZE,
    LARGE_PIPE_BUDGET,
    LARGE_PIPE_SIZE,
    PipePool,
    SplicePump,
    splice_available,
)
from natrelay.engine.stats import DURATION_BUCKETS, Histogram

__all__ = ["ForwardEngine", "Method", "PortablePump", "Totals", "start_forwarding"]

_log = logging.getLogger(__name__)

Method = Literal["auto", "splice", "portable"]

#: Shared read buffer of the portable path; also the most a slow destination can
#: make one direction hold.
DEFAULT_BUFFER_SIZE = 256 * 1024


@dataclass(slots=True)
class Totals:
    """Exact engine-wide counters, updated as bytes are delivered and sessions end."""

    a_to_b: int = 0
    b_to_a: int = 0
    started: int = 0
    closed: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    durations: Histogram = field(default_factory=lambda: Histogram(DURATION_BUCKETS))
    """Lifetimes of the sessions that ended, in seconds (for the metrics' histogram)."""

    @property
    def active(self) -> int:
        return self.started - self.closed

    @property
    def bytes(self) -> int:
        return self.a_to_b + self.b_to_a


#: The most one direction of a rate-limited session moves per wake-up.
RATE_CHUNK = 64 * 1024


def rate_burst(rate: float) -> float:
    """The bucket size for a limit: a tenth of a second at the rate, at least 16 KiB, so a limit
    holds within a few percent over seconds while slow limits still move whole segments."""
    return max(16 * 1024.0, rate / 10)


class PortablePump(Pump):
    """One direction moved through the engine's shared buffer."""

    __slots__ = ("budget", "buf")

    def __init__(self, session: ForwardSession, src: socket.socket, dst: socket.socket, ab: bool,
                 pending: bytes, buf: memoryview, budget: int) -> None:
        super().__init__(session, src, dst, ab, pending)
        self.buf = buf
        self.budget = budget

    def _pump_in(self) -> int:
        buf = self.buf
        recv_into = self.src.recv_into
        send = self.dst.send
        budget = self.budget
        short_is_again = self.session.engine.short_read_is_again
        moved = 0
        outcome = AGAIN
        while True:
            try:
                n = recv_into(buf)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                if moved:
                    self._delivered(moved)
                self.session._fail(exc, self._src_side())
                return FAILED
            if n == 0:
                outcome = EOF
                break
            chunk = buf[:n]
            try:
                m = send(chunk)
            except (BlockingIOError, InterruptedError):
                m = 0
            except OSError as exc:
                if moved:
                    self._delivered(moved)
                self.session._fail(exc, self._dst_side())
                return FAILED
            moved += m
            if m < n:
                # Only now does this session need memory of its own.
                self.backlog = bytearray(chunk[m:])
                outcome = BLOCKED
                break
            if short_is_again and n < len(buf):
                break
            budget -= 1
            if not budget:
                outcome = BUDGET
                break
        if moved:
            self._delivered(moved)
        return outcome


class ForwardEngine:
    """All forwarded sessions of one event loop: pipes, buffer, timers, totals.

    Not thread-safe: call it from its loop's thread only (one engine per loop when
    forwarding on several cores).
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        *,
        method: Method = "auto",
        pipe_size: int | None = None,
        max_spare_pipes: int = 16,
        buffer_size: int = DEFAULT_BUFFER_SIZE,
        max_chunks_per_wakeup: int = 4,
        clock: Callable[[], float] | None = None,
        timer_slack: float = 0.05,
        nodelay: bool = True,
        session_rate: float | None = None,
        global_rate: float | None = None,
        busy_poll: float | None = None,
        poller: str = "auto",
    ) -> None:
        """``pipe_size``: capacity of the splice pipes; None = the engine's choice (the first pipes of
        ``LARGE_PIPE_SIZE`` within ``LARGE_PIPE_BUDGET``, then ``DEFAULT_PIPE_SIZE``).
        ``session_rate`` and ``global_rate`` (bytes per second, None = no limit) cap each session's
        two directions together and all sessions of this engine together. ``busy_poll``: seconds the
        loop keeps polling after a delivery (:mod:`natrelay.engine.busypoll`); None = from
        ``NATRELAY_BUSY_POLL_US`` or the default, 0 = off. ``poller``: how readiness of the forwarded
        sockets is watched (:mod:`natrelay.engine.poller`): ``"epoll"`` of the engine's own,
        ``"loop"`` readers, ``"auto"`` = epoll where the system has it."""
        if buffer_size <= 0 or max_chunks_per_wakeup <= 0:
            raise ValueError("buffer_size and max_chunks_per_wakeup must be positive")
        # Without a size of the caller's, the first pipes are large (see splice.LARGE_PIPE_SIZE).
        tiered = pipe_size is None
        if pipe_size is None:
            pipe_size = DEFAULT_PIPE_SIZE
        if session_rate or global_rate:
            # A throttle can only pause after a wake-up moved its bytes: keep that to one small
            # chunk per direction, so a limit overshoots by at most RATE_CHUNK (and repays it).
            pipe_size, buffer_size = min(pipe_size, RATE_CHUNK), min(buffer_size, RATE_CHUNK)
            max_chunks_per_wakeup = 1
            tiered = False
        self.loop = loop
        self.busy_poll = BusyPoll(loop, busy_poll_from_env(os.environ) if busy_poll is None else busy_poll)
        self.poller: Poller = make_poller(loop, poller)
        if isinstance(self.poller, EpollPoller):
            self.busy_poll.poll = self.poller.dispatch
        self._splice_ok: bool | None = None
        if method == "splice" and not self._can_splice():
            raise RuntimeError("splice(2) forwarding is not available here")
        self.method: Literal["splice", "portable"] = (
            "splice" if method == "splice" or (method == "auto" and self._can_splice()) else "portable"
        )
        self.pool = PipePool(pipe_size, max_spare_pipes, large_size=LARGE_PIPE_SIZE if tiered else None,
                             large_budget=LARGE_PIPE_BUDGET if tiered else 0)
        self.timers: WheelDriver[ForwardSession] = WheelDriver(
            loop, self._on_timer, slack=timer_slack, clock=clock
        )
        self.time = self.timers.time
        self.totals = Totals()
        self.nodelay = nodelay
        self.session_rate = session_rate
        self.global_bucket = (TokenBucket(global_rate, rate_burst(global_rate), self.time())
                              if global_rate else None)
        self._throttles: dict[ForwardSession, SessionThrottle] = {}
        # A short read almost always means the socket is drained.  A level-triggered poller
        # (the engine's epoll, asyncio's selector loops) re-reports a still-readable
        # descriptor, so the read that would only confirm EAGAIN can be skipped there.
        # uvloop's own readers must see EAGAIN (see Pump), so there we pay the extra read.
        self.short_read_is_again = self.poller.level_triggered
        self._budget = max_chunks_per_wakeup
        self._buffer_size = buffer_size
        self._buf: memoryview | None = None
        self._sessions: set[ForwardSession] = set()
        self._closed = False
        self._close_when_empty = False

    def __len__(self) -> int:
        return len(self._sessions)

    @property
    def sessions(self) -> list[ForwardSession]:
        """A copy of the live sessions (for shutdown and status pages, not per event)."""
        return list(self._sessions)

    @property
    def is_closed(self) -> bool:
        return self._closed

    def start(
        self,
        a: socket.socket,
        b: socket.socket,
        *,
        idle_timeout: float | None = None,
        on_close: OnClose | None = None,
        method: Method | None = None,
        a_to_b: bytes = b"",
        b_to_a: bytes = b"",
        context: object = None,
        nodelay_set: bool = False,
    ) -> ForwardSession:
        """Forward ``a`` <-> ``b`` until done; the engine owns both sockets from now on.

        ``a_to_b`` / ``b_to_a`` are bytes the caller already read from ``a`` / ``b``
        (say, behind a handshake) and that the other peer must get first.
        ``idle_timeout`` closes the session with reason ``"idle"`` once no byte has
        moved in either direction for that long.
        ``nodelay_set`` says the caller already turned Nagle off on both (a listener that
        does it at accept), so the engine does not repeat that system call per socket.

        A socket may still have a reader registered on this loop (the caller's, watching
        it until pairing): the engine removes it (with its own epoll) or replaces that
        callback in place (with the loop's readers). A reader the caller set on this
        engine's own :attr:`poller` is taken over with its registration in place, which is
        the cheapest way to watch a socket until it pairs. A caller on another loop must
        remove its reader before handing over.
        """
        if self._closed:
            raise RuntimeError("the forwarding engine is closed")
        if idle_timeout is not None and idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive or None")
        chosen = self.method if method in (None, "auto") else method
        if chosen == "splice" and not self._can_splice():
            raise RuntimeError("splice(2) forwarding is not available here")
        for sock in (a, b):
            if sock.fileno() < 0:
                raise ValueError("socket is closed")
            if sock.type != socket.SOCK_STREAM:
                raise ValueError("only stream sockets can be forwarded")
        poller = self.poller
        handed: tuple[int, ...] = ()
        if isinstance(poller, EpollPoller):
            # The caller's reader or writer on the loop (a listener watching until pairing) must
            # go: the loop would go on calling it for bytes that are the engine's now. One on
            # this engine's own poller is handed over instead: its registration stays, and the
            # pumps only swap the callbacks (no epoll_ctl per socket, see EpollPoller.detach).
            loop = self.loop
            for sock in (a, b):
                fd = sock.fileno()
                loop.remove_reader(fd)
                loop.remove_writer(fd)
            handed = tuple(fd for fd in (a.fileno(), b.fileno()) if poller.detach(fd))
        for sock in (a, b):
            if sock.getblocking():  # Python tracks the mode itself: asking costs no system call
                sock.setblocking(False)
            if self.nodelay and not nodelay_set and sock.family in (socket.AF_INET, socket.AF_INET6):
                # Relayed small writes must not wait for Nagle on our side too.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        session = ForwardSession(self, a, b, idle_timeout=idle_timeout, on_close=on_close,
                                 context=context, method=chosen)
        if self.session_rate or self.global_bucket is not None:
            buckets = [TokenBucket(self.session_rate, rate_burst(self.session_rate), session.started_at)] \
                if self.session_rate else []
            if self.global_bucket is not None:
                buckets.append(self.global_bucket)
            self._throttles[session] = SessionThrottle(self.loop, session, buckets)
        ab: Pump
        ba: Pump
        if chosen == "splice":
            ab = SplicePump(session, a, b, True, a_to_b, self.pool, self._budget)
            ba = SplicePump(session, b, a, False, b_to_a, self.pool, self._budget)
        else:
            buf = self._shared_buffer()
            ab = PortablePump(session, a, b, True, a_to_b, buf, self._budget)
            ba = PortablePump(session, b, a, False, b_to_a, buf, self._budget)
        self._sessions.add(session)
        self.totals.started += 1
        if idle_timeout is not None:
            self.timers.schedule(session, session.last_activity + idle_timeout)
        try:
            session._start(ab, ba)
        except BaseException:
            # Registration failed (say, uvloop found a transport on the descriptor):
            # the sockets are ours now, so they are closed rather than leaked.
            for fd in handed:
                poller.settle(fd)
            session._close(ERROR)
            raise
        for fd in handed:
            poller.settle(fd)
        return session

    def drain_all(self, reason: str = "shutdown") -> None:
        """Ask every session to deliver what it holds and finish (graceful shutdown)."""
        for session in list(self._sessions):
            session.drain(reason)

    def close(self, reason: str = "shutdown") -> None:
        """Close every session now and release pipes and timers."""
        for session in list(self._sessions):
            session.close(reason)
        self._shutdown()

    @property
    def pipes_in_use(self) -> int:
        return self.pool.in_use

    # ------------------------------------------------------------ internals

    def _can_splice(self) -> bool:
        if self._splice_ok is None:
            self._splice_ok = splice_available()
        return self._splice_ok

    def _shared_buffer(self) -> memoryview:
        if self._buf is None:
            self._buf = memoryview(bytearray(self._buffer_size))
        return self._buf

    def _on_timer(self, session: ForwardSession) -> None:
        session._check_idle(self.time())

    def _session_closed(self, session: ForwardSession, reason: str) -> None:
        self._sessions.discard(session)
        self.timers.cancel(session)
        totals = self.totals
        totals.closed += 1
        totals.reasons[reason] = totals.reasons.get(reason, 0) + 1
        totals.durations.observe(self.time() - session.started_at)
        throttle = self._throttles.pop(session, None)
        if throttle is not None:
            throttle.cancel()
        if self._close_when_empty and not self._sessions:
            self._shutdown()

    def _shutdown(self) -> None:
        self._closed = True
        self.busy_poll.close()
        self.poller.close()
        self.timers.close()
        self.pool.close()


def start_forwarding(
    loop: asyncio.AbstractEventLoop,
    a: socket.socket,
    b: socket.socket,
    *,
    idle_timeout: float | None,
    on_close: OnClose | None,
    method: Method = "auto",
    engine: ForwardEngine | None = None,
    a_to_b: bytes = b"",
    b_to_a: bytes = b"",
    context: object = None,
    poller: str = "auto",
) -> ForwardSession:
    """Forward ``a`` <-> ``b`` on ``loop``.

    Servers pass their ``engine`` so that all sessions share one timer and one
    pipe pool.  Without one, a private engine is made for this session and shut
    down with it: correct, but it costs a loop timer and a pool per session.
    """
    if engine is None:
        engine = ForwardEngine(loop, method=method, max_spare_pipes=1, poller=poller)
        engine._close_when_empty = True
    elif engine.loop is not loop:
        raise ValueError("engine belongs to another event loop")
    return engine.start(a, b, idle_timeout=idle_timeout, on_close=on_close, method=method,
                        a_to_b=a_to_b, b_to_a=b_to_a, context=context)
