"""The relay's paired sessions: handed to the forwarding engine, timed, ended.

Once two peers have paired (:mod:`natrelay.aspia.relay.server` accepts them, admits them and
reads their ``PeerToRelay``), what remains is bookkeeping of a different kind: which engine or
thread moves the session's bytes, when its lifetime (``MaxSessionDuration``) runs out, and what
its end gives back (admission slots, a replacement key). :class:`ForwardedSessions` holds that;
the listener only asks it to start a pair, for its next lifetime deadline, and for the sessions
whose lifetime has passed.

Forwarding can use every core: with ``workers`` > 0 a paired session's two sockets move to one
of that many forwarding threads (:mod:`natrelay.engine.threads`), while accepting, pairing, the
key pool and the router link stay on the listener's loop, single-threaded. A session's end comes
back to that loop, so the key accounting and the replacement key are exactly as with one loop.
``workers`` = 0 forwards on the loop itself.

Lifetimes are deadlines on the engine's :class:`~natrelay.engine.timers.TimerWheel`, keyed by
session ID, like every other deadline of every family; an ended session's is cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from natrelay.aspia.relay.pairing import PeerInfo
from natrelay.aspia.relay.stats import SessionSnapshot
from natrelay.engine.forward import ForwardEngine
from natrelay.engine.poller import Poller, make_poller
from natrelay.engine.session import ForwardSession
from natrelay.engine.threads import ForwardingThreads, ThreadedSession
from natrelay.engine.timers import TimerWheel

log = logging.getLogger("natrelay.aspia.relay")


@dataclass(slots=True)
class ActiveSession:
    """A paired, forwarding session (what statistics and disconnect requests refer to)."""

    session_id: int
    key_id: int
    info: PeerInfo
    addresses: tuple[str, str]
    sources: tuple[str, str] = ("", "")
    ends_at: float = float("inf")
    forward: ForwardSession | ThreadedSession | None = None

    def snapshot(self) -> SessionSnapshot:
        forward = self.forward
        assert forward is not None
        return SessionSnapshot(self.session_id, self.info, forward.counters.total, forward.started_at,
                               forward.last_activity)


class ForwardedSessions:
    """The paired sessions of one listener, and the engine or threads that forward them.

    Forwarding happens on ``engine`` (this loop) when one is given or ``workers`` is 0, else on
    ``workers`` forwarding threads started by :meth:`start_threads`. ``on_end`` hears of every
    session that ended, once, after it left :attr:`sessions`; it is always called on this loop.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, *, engine: ForwardEngine | None, workers: int,
                 session_rate: int, global_rate: int, idle_timeout: float, max_session: float,
                 on_end: Callable[[ActiveSession], None]) -> None:
        self.loop = loop
        self.engine: ForwardEngine | None = None
        self.threads: ForwardingThreads | None = None
        if engine is not None or workers <= 0:
            self.engine = engine if engine is not None else ForwardEngine(
                loop, session_rate=session_rate or None, global_rate=global_rate or None)
        else:
            share = global_rate / workers if global_rate else None
            self.threads = ForwardingThreads(workers, home=loop, engine_factory=lambda loop: (
                ForwardEngine(loop, session_rate=session_rate or None, global_rate=share)))
        self.watch: Poller = self.engine.poller if self.engine is not None else make_poller(loop)
        """Where the listener watches its peers until they pair: the engine's own poller when it
        forwards on this loop, so a pair is handed over with its registrations in place (no
        epoll_ctl, no loop poll handle made and torn down per peer: see EpollPoller.detach);
        a poller of this loop's own when threads forward, which :meth:`start` unregisters from."""
        self.idle_timeout = idle_timeout
        self.max_session = max_session
        """Seconds a paired session may last; 0 = no cap."""
        self.on_end = on_end
        self.sessions: dict[int, ActiveSession] = {}
        self._session_ids = itertools.count(1)
        self._lifetimes: TimerWheel[int] = TimerWheel()

    def start_threads(self) -> None:
        """Start the forwarding threads, if any; raises RuntimeError if one cannot start."""
        if self.threads is not None:
            self.threads.start()

    def close(self, reason: str) -> None:
        """Close every session (each ends through :attr:`on_end` as usual)."""
        if self.engine is not None:
            self.engine.close(reason)
        if self.threads is not None:
            self.threads.close(reason)
            self.watch.close()

    def snapshots(self) -> list[SessionSnapshot]:
        return [s.snapshot() for s in self.sessions.values() if s.forward is not None]

    def disconnect(self, session_id: int) -> bool:
        """Drop a session (router's ``peer_connection_request``); a normal session end follows."""
        session = self.sessions.get(session_id)
        if session is None or session.forward is None:
            return False
        session.forward.close("disconnected by the router")
        return True

    # ------------------------------------------------------------------ start
    def start(self, key_id: int, info: PeerInfo, socks: tuple[socket.socket, socket.socket],
              addresses: tuple[str, str], sources: tuple[str, str]) -> ActiveSession | None:
        """Forward a pair's two sockets (non-blocking, Nagle off); None if it could not start.

        The sockets may still be registered with :attr:`watch`: an engine on this loop takes
        them over in place (ForwardEngine.start). Another loop takes them, so for the threads
        nothing of them may stay registered here.
        """
        first, second = socks
        if self.threads is not None:
            for sock in socks:
                with contextlib.suppress(Exception):
                    self.watch.remove_reader(sock.fileno())
        session = ActiveSession(next(self._session_ids), key_id, info, addresses, sources)
        self.sessions[session.session_id] = session
        if self.max_session > 0:
            session.ends_at = self.loop.time() + self.max_session
            self._lifetimes.schedule(session.session_id, session.ends_at)
        idle = self.idle_timeout
        try:
            if self.threads is not None:
                # The worker owns both sockets from here; nothing of them stays on this loop.
                session.forward = self.threads.start_session(
                    first, second, idle_timeout=idle, on_close=self.closed, context=session)
            else:
                assert self.engine is not None
                session.forward = self.engine.start(
                    first, second, idle_timeout=idle, on_close=self.closed, context=session, nodelay_set=True)
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("Cannot forward session %d: %s", session.session_id, exc)
            for sock in socks:
                with contextlib.suppress(Exception):  # the listener's reader may still be there
                    self.watch.remove_reader(sock.fileno())
                sock.close()
            self.closed(None, "error", session)
            return None
        return session

    # -------------------------------------------------------------------- end
    def closed(self, forward: ForwardSession | ThreadedSession | None, reason: str,
               session: ActiveSession | None = None) -> None:
        """The engine's close callback (or a start that failed): forget the session, tell ``on_end``."""
        if session is None:
            assert forward is not None
            context = forward.context
            assert isinstance(context, ActiveSession)
            session = context
        if self.sessions.pop(session.session_id, None) is None:
            return
        self._lifetimes.cancel(session.session_id)
        moved = forward.counters.total if forward is not None else 0
        log.info("Session %d ended (%s) after %d bytes; %d sessions active", session.session_id, reason,
                 moved, len(self.sessions))
        self.on_end(session)

    # -------------------------------------------------------------- lifetimes
    def next_deadline(self) -> float | None:
        """When the next live session's lifetime runs out, if any has one."""
        return self._lifetimes.next_deadline()

    def expired(self, now: float) -> list[ActiveSession]:
        """The sessions whose lifetime has run out by ``now``; the caller closes them."""
        sessions = self.sessions
        return [sessions[i] for i in self._lifetimes.expired(now) if i in sessions]
