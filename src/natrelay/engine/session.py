"""A paired session: both ends, the two directions between them, and why it ended.

A session is two connected sockets ``a`` and ``b`` that the engine forwards both
ways until both directions have seen EOF and delivered everything (``"done"``), a
peer resets or a socket fails (``"reset"`` / ``"error"``), nothing moves for
``idle_timeout`` seconds (``"idle"``), or the owner closes it.  The protocol family
that paired the sockets learns the outcome from ``on_close`` or the ``closed``
future, and reads exact byte counts from :attr:`ForwardSession.counters` at any time.

Bytes move in :class:`Pump` objects, one per direction; this module holds what
is common to both forwarding methods (readiness bookkeeping, bytes the relay must
deliver before reading more, half-close) and the subclasses in
:mod:`natrelay.engine.forward` and :mod:`natrelay.engine.splice` only move bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from natrelay.engine.busypoll import BUSY_POLL_MAX_DELIVERY

if TYPE_CHECKING:
    from natrelay.engine.forward import ForwardEngine

__all__ = [
    "CLOSED",
    "DONE",
    "ERROR",
    "IDLE",
    "RESET",
    "Counters",
    "ForwardSession",
    "OnClose",
    "Pump",
    "Side",
]

_log = logging.getLogger(__name__)

#: Both directions saw EOF and delivered every byte; both peers got a FIN.
DONE = "done"
#: A peer reset the connection or went away while bytes were owed to it.
RESET = "reset"
#: A socket failed in a way that is not a peer's doing (logged).
ERROR = "error"
#: No byte moved in either direction for ``idle_timeout`` seconds.
IDLE = "idle"
#: The owner called :meth:`ForwardSession.close` without a reason.
CLOSED = "closed"

Side = Literal["a", "b"]
OnClose = Callable[["ForwardSession", str], None]

# Errors that mean "the peer is gone", as opposed to a bug or resource trouble.
_PEER_GONE = frozenset(
    {
        errno.ECONNRESET,
        errno.EPIPE,
        errno.ECONNABORTED,
        errno.ENOTCONN,
        errno.ETIMEDOUT,
        errno.EHOSTUNREACH,
        errno.ENETUNREACH,
        errno.ESHUTDOWN,
    }
)
_LINGER_ABORT = struct.pack("ii", 1, 0)

# Outcomes of Pump._pump_in (plain ints: compared on every wake-up).
AGAIN = 0  # the source has nothing more right now
BLOCKED = 1  # the destination is full; bytes are held until it drains
EOF = 2  # the source sent FIN; everything read so far is delivered
BUDGET = 3  # moved the per-wake-up maximum; yield to other sessions
FAILED = 4  # the session was closed while moving bytes


@dataclass(slots=True)
class Counters:
    """Bytes delivered per direction: written into the destination socket.

    "Delivered" means accepted by the kernel for the other peer, so a byte is
    counted once, at the moment the relay let go of it.  Pending bytes passed at
    start count too, because they were part of the peer's stream.
    """

    a_to_b: int = 0
    b_to_a: int = 0

    @property
    def total(self) -> int:
        return self.a_to_b + self.b_to_a


class Pump:
    """One direction of a session: read ``src``, deliver to ``dst``.

    A pump is in one of three phases, and at most one readiness callback is
    registered for it at a time: reading (reader on ``src``), blocked (writer on
    ``dst`` while held bytes drain) or finished.  Stopping reading while bytes are
    held is the backpressure: the peer's TCP window closes instead of the relay's
    memory growing.

    Registrations go to the engine's poller (:mod:`natrelay.engine.poller`). With a
    level-triggered one (the engine's own epoll, the default on Linux, or asyncio's
    selector loops) a socket with bytes left is simply reported again, so a short read
    ends a wake-up and a pump that used its budget keeps its reader. On uvloop's own
    readers a callback returns with its registration still in place only after the
    socket said EAGAIN (or took a partial write): uvloop calls a poll handle's
    callbacks one last time when epoll reports an error and then closes that handle
    behind the caller's back (uvloop #552); a pump that saw EAGAIN cannot have been in
    that situation, and one that yields with data still waiting drops its
    registration first and continues from ``call_soon``.
    """

    __slots__ = ("ab", "backlog", "delivered", "dst", "dst_fd", "eof", "finished", "paused", "reading",
                 "session", "src", "src_fd", "writing", "yielded")

    def __init__(self, session: ForwardSession, src: socket.socket, dst: socket.socket, ab: bool,
                 pending: bytes) -> None:
        self.session = session
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.ab = ab
        self.backlog: bytearray | None = bytearray(pending) if pending else None
        self.delivered = 0
        self.eof = False
        self.finished = False
        self.reading = False
        self.writing = False
        self.yielded = False
        # Set by a rate limit: no reading (held bytes still drain), so the peer's TCP window
        # closes, exactly as with backpressure; bytes never pass through Python for it.
        self.paused = False

    # ------------------------------------------------------------ subclass hooks

    def _pump_in(self) -> int:
        """Move bytes from ``src`` to ``dst`` until one of the outcomes above."""
        raise NotImplementedError

    def _flush_held(self) -> bool | None:
        """Deliver bytes held by the subclass: True when none are left, False when
        ``dst`` is full, None when the session was closed."""
        return True

    def _held(self) -> int:
        """Bytes the subclass holds for ``dst``."""
        return 0

    def release(self) -> None:
        """Give back what the subclass holds; the session is closing."""

    # ------------------------------------------------------------ common logic

    @property
    def buffered(self) -> int:
        """Bytes read from ``src`` that ``dst`` has not taken yet."""
        return (len(self.backlog) if self.backlog else 0) + self._held()

    def start(self) -> None:
        if self.backlog:
            self._want_write(True)
        else:
            self._want_read(True)

    def stop(self) -> None:
        """Drop every registration; nothing is called on this pump afterwards."""
        poller = self.session.engine.poller
        if self.reading:
            self.reading = False
            poller.remove_reader(self.src_fd)
        if self.writing:
            self.writing = False
            poller.remove_writer(self.dst_fd)
        self.backlog = None
        self.release()

    def drain(self) -> None:
        """Stop reading; half-close ``dst`` once everything held is delivered."""
        if self.eof:
            return
        self.eof = True
        self._want_read(False)
        if not self.writing:
            self._finish()

    def pause(self) -> None:
        self.paused = True
        self._want_read(False)

    def resume(self) -> None:
        if not self.paused:
            return
        self.paused = False
        if self.session.is_closed or self.eof or self.writing or self.reading or self.yielded:
            return
        # Data may be waiting: read from call_soon like a yielded pump (see the class docstring).
        self.yielded = True
        self.session.loop.call_soon(self._on_budget)

    def _want_read(self, on: bool) -> None:
        on = on and not self.paused
        if on != self.reading:
            self.reading = on
            if on:
                self.session.engine.poller.add_reader(self.src_fd, self._on_readable)
            else:
                self.session.engine.poller.remove_reader(self.src_fd)

    def _want_write(self, on: bool) -> None:
        if on != self.writing:
            self.writing = on
            if on:
                self.session.engine.poller.add_writer(self.dst_fd, self._on_writable)
            else:
                self.session.engine.poller.remove_writer(self.dst_fd)

    def _on_readable(self) -> None:
        if self.paused:
            self._want_read(False)
        elif not self.session.is_closed:
            self._after_in(self._pump_in())

    def _on_budget(self) -> None:
        self.yielded = False
        if (not self.session.is_closed and not self.eof and not self.writing and not self.reading
                and not self.paused):
            self._after_in(self._pump_in())

    def _after_in(self, outcome: int) -> None:
        if outcome == AGAIN:
            self._want_read(True)
        elif outcome == BLOCKED:
            self._want_read(False)
            self._want_write(True)
        elif outcome == BUDGET:
            if self.session.engine.poller.level_triggered:
                # Bytes are waiting, so the poller reports this socket again on the loop's next
                # turn, after every other ready callback: fair without a registration change.
                self._want_read(True)
                return
            self._want_read(False)
            if not self.yielded:
                self.yielded = True
                self.session.loop.call_soon(self._on_budget)
        elif outcome == EOF:
            self._want_read(False)
            self.eof = True
            self._finish()
        # FAILED: the session is closed and every registration is gone.

    def _on_writable(self) -> None:
        if self.session.is_closed:
            return
        if self.backlog:
            done = self._send_backlog()
            if not done:
                return
        flushed = self._flush_held()
        if not flushed:
            return
        self._want_write(False)
        if self.eof:
            self._finish()
        elif not self.paused:
            self._after_in(self._pump_in())

    def _send_backlog(self) -> bool | None:
        backlog = self.backlog
        assert backlog is not None
        try:
            sent = self.dst.send(backlog)
        except (BlockingIOError, InterruptedError):
            return False
        except OSError as exc:
            self.session._fail(exc, self._dst_side())
            return None
        if sent:
            self._delivered(sent)
        if sent < len(backlog):
            del backlog[:sent]
            return False
        self.backlog = None
        return True

    def _delivered(self, n: int) -> None:
        self.delivered += n
        session = self.session
        session.last_activity = session.engine.time()
        if n <= BUSY_POLL_MAX_DELIVERY:  # a message, not a stream: its answer follows within microseconds
            session.engine.busy_poll.kick()
        totals = session.engine.totals
        if self.ab:
            totals.a_to_b += n
        else:
            totals.b_to_a += n
        meter = session.meter
        if meter is not None:
            meter(session, n)

    def _finish(self) -> None:
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            self.session._fail(exc, self._dst_side())
            return
        self.finished = True
        self.session._direction_finished()

    def _src_side(self) -> Side:
        return "a" if self.ab else "b"

    def _dst_side(self) -> Side:
        return "b" if self.ab else "a"


class ForwardSession:
    """Two sockets forwarded both ways by a :class:`~natrelay.engine.forward.ForwardEngine`.

    Created by :meth:`ForwardEngine.start`; the session owns both sockets from then
    on and closes them exactly once.  ``context`` is the owner's, for whatever it
    needs to find again in ``on_close`` (a pairing key, peer addresses).
    """

    __slots__ = ("_ab", "_ba", "_closed_fut", "_drain_reason", "_on_close", "a", "b", "close_error",
                 "close_reason", "close_side", "context", "engine", "idle_timeout", "last_activity",
                 "loop", "meter", "method", "started_at")

    def __init__(
        self,
        engine: ForwardEngine,
        a: socket.socket,
        b: socket.socket,
        *,
        idle_timeout: float | None,
        on_close: OnClose | None,
        context: object,
        method: str,
    ) -> None:
        self.engine = engine
        self.loop = engine.loop
        self.a = a
        self.b = b
        self.idle_timeout = idle_timeout
        self._on_close = on_close
        self.context = context
        self.method = method
        now = engine.time()
        self.started_at = now
        self.last_activity = now
        self.close_reason: str | None = None
        self.close_error: OSError | None = None
        self.close_side: Side | None = None
        self._closed_fut: asyncio.Future[str] | None = None
        self._drain_reason: str | None = None
        #: Called with every delivered byte count when set (rate limits); ``None`` costs nothing.
        self.meter: Callable[[ForwardSession, int], None] | None = None
        self._ab: Pump
        self._ba: Pump

    def __repr__(self) -> str:
        state = self.close_reason or "open"
        c = self.counters
        return f"<ForwardSession {self.method} {state} a->b={c.a_to_b} b->a={c.b_to_a}>"

    # ------------------------------------------------------------ public

    @property
    def counters(self) -> Counters:
        """A snapshot of the exact bytes delivered so far in each direction."""
        return Counters(self._ab.delivered, self._ba.delivered)

    @property
    def buffered(self) -> int:
        """Bytes the relay holds (pipe or buffer) that no peer has taken yet."""
        return self._ab.buffered + self._ba.buffered

    @property
    def is_closed(self) -> bool:
        return self.close_reason is not None

    @property
    def closed(self) -> asyncio.Future[str]:
        """A future resolved with the close reason.

        Created on first use so that the many sessions nobody awaits do not each
        carry a future.
        """
        fut = self._closed_fut
        if fut is None:
            fut = self._closed_fut = self.loop.create_future()
            if self.close_reason is not None:
                fut.set_result(self.close_reason)
        return fut

    def half_closed(self) -> tuple[bool, bool]:
        """Whether ``a``'s and ``b``'s sending direction have finished."""
        return (self._ab.finished, self._ba.finished)

    def drain(self, reason: str = DONE) -> None:
        """Stop reading both peers, deliver what is held, half-close both, then close.

        The close reason is ``reason``.  A peer that never reads keeps the session
        open until its idle timeout, so drains are bounded by that.
        """
        if self.is_closed:
            return
        self._drain_reason = reason
        self._ab.drain()
        if not self.is_closed:
            self._ba.drain()

    def pause_reading(self) -> None:
        """Stop reading both peers (bytes already read still drain); for rate limits."""
        self._ab.pause()
        self._ba.pause()

    def resume_reading(self) -> None:
        """Undo :meth:`pause_reading`."""
        if not self.is_closed:
            self._ab.resume()
            self._ba.resume()

    @property
    def paused(self) -> bool:
        return self._ab.paused

    def close(self, reason: str = CLOSED, *, abort: bool = False) -> None:
        """Close both sockets now; held bytes are dropped.

        ``abort`` sends both peers a reset instead of a FIN, so that neither can
        mistake a truncated stream for a complete one.
        """
        self._close(reason, abort=abort)

    # ------------------------------------------------------------ engine side

    def _start(self, ab: Pump, ba: Pump) -> None:
        self._ab = ab
        self._ba = ba
        ab.start()
        ba.start()

    def _direction_finished(self) -> None:
        if self._ab.finished and self._ba.finished:
            self._close(self._drain_reason or DONE)

    def _check_idle(self, now: float) -> None:
        """Called by the engine's wheel: close if idle, else re-arm for the true deadline."""
        timeout = self.idle_timeout
        if timeout is None or self.is_closed:
            return
        due = self.last_activity + timeout
        if now >= due:
            self._close(IDLE)
        else:
            self.engine.timers.schedule(self, due)

    def _fail(self, exc: OSError, side: Side) -> None:
        reason = RESET if exc.errno in _PEER_GONE else ERROR
        if reason == ERROR:
            _log.warning("session %r: socket %s failed: %s", self, side, exc)
        self.close_error = exc
        self.close_side = side
        # The surviving peer gets a reset: a FIN would tell it the stream ended
        # cleanly when in fact bytes may have been lost.
        self._close(reason, abort=True)

    def _close(self, reason: str, *, abort: bool = False) -> None:
        if self.close_reason is not None:
            return
        self.close_reason = reason
        self._ab.stop()
        self._ba.stop()
        for sock in (self.a, self.b):
            if abort:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_ABORT)
            sock.close()
        self.engine._session_closed(self, reason)
        fut = self._closed_fut
        if fut is not None and not fut.done():
            fut.set_result(reason)
        cb = self._on_close
        if cb is not None:
            self._on_close = None
            try:
                cb(self, reason)
            except Exception:
                _log.exception("on_close callback failed for %r", self)
