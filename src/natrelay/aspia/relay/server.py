"""The relay's peer listener (spec §7.3-§7.5): accept, read ``PeerToRelay``, pair, forward.

Peer connections stay plain non-blocking sockets from accept to close, because the forwarding
engine takes two sockets and moves their bytes without Python touching them (splice where
available). Before pairing, a connection is read exactly as far as its ``PeerToRelay`` goes:
the 4-byte length first, then precisely that many bytes, so whatever the peer sends next (a
Client's ClientHello often arrives in the same write) stays in the kernel and reaches the
partner as the first forwarded bytes. While it waits for its partner, a pending connection is
still watched with ``MSG_PEEK``, so a peer that gives up frees its slot at once instead of after
the 30-second timeout (§12 bug 17).

Deliberate differences from 2.7.0: ``MaxPeerCount`` also caps the connections accepted (two per
possible session) instead of only sizing the key pool; an idle session is timed from its last
byte (§12 bug 14) and ends like any other session, freeing its slot and announcing a
replacement key (§12 bug 1); a listener that cannot bind is fatal (§12 bug 5).

Forwarding can use every core: with ``workers`` > 0 a paired session's two sockets move to one
of that many forwarding threads (:mod:`natrelay.engine.threads`), while accepting, pairing, the
key pool and the router link stay on this loop, single-threaded. A session's end comes back to
this loop, so the key accounting and the replacement key are exactly as with one loop.
``workers`` = 0 forwards on this loop itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass

from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.messages import MAX_PEER_TO_RELAY_SIZE, PeerToRelayReader
from natrelay.aspia.relay.keypool import KeyPool, PoolKey
from natrelay.aspia.relay.pairing import PENDING_TIMEOUT, Paired, Pairing, PeerInfo
from natrelay.aspia.relay.stats import SessionSnapshot
from natrelay.engine.forward import ForwardEngine
from natrelay.engine.session import ForwardSession
from natrelay.engine.stats import RelayStats
from natrelay.engine.threads import ForwardingThreads, ThreadedSession

log = logging.getLogger("natrelay.aspia.relay")

ACCEPTS_PER_WAKEUP = 64
LISTEN_BACKLOG = 1024


@dataclass(frozen=True)
class PeerListenerConfig:
    """The peer side of relay.json, with times in seconds."""

    listen_host: str
    """Empty: every interface, IPv6 and IPv4 (``[::]`` dual-stack, as the original)."""
    port: int
    idle_timeout: float
    pending_timeout: float = PENDING_TIMEOUT
    max_message: int = MAX_PEER_TO_RELAY_SIZE
    workers: int = 0
    """Forwarding threads; 0 forwards on the listener's own loop."""
    session_rate: int = 0
    """Bytes per second per session, both directions together; 0 = no limit."""
    global_rate: int = 0
    """Bytes per second for all sessions together (split evenly over forwarding threads); 0 = none."""


class _Pending:
    """An accepted peer connection that has not paired yet."""

    __slots__ = ("accepted_at", "address", "fd", "reader", "sock", "watching")

    def __init__(self, sock: socket.socket, address: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.reader: PeerToRelayReader | None = None
        self.watching = False
        self.accepted_at = 0.0


@dataclass(slots=True)
class ActiveSession:
    """A paired, forwarding session (what statistics and disconnect requests refer to)."""

    session_id: int
    key_id: int
    info: PeerInfo
    addresses: tuple[str, str]
    forward: ForwardSession | ThreadedSession | None = None

    def snapshot(self) -> SessionSnapshot:
        forward = self.forward
        assert forward is not None
        return SessionSnapshot(self.session_id, self.info, forward.counters.total, forward.started_at,
                               forward.last_activity)


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)


def bind_listener(host: str, port: int) -> socket.socket:
    """The peer listener; raises OSError (the caller treats it as fatal, §12 bug 5)."""
    if not host:
        if socket.has_dualstack_ipv6():
            sock = socket.create_server(("::", port), family=socket.AF_INET6, backlog=LISTEN_BACKLOG,
                                        dualstack_ipv6=True)
        else:  # pragma: no cover - hosts without IPv6
            sock = socket.create_server(("0.0.0.0", port), backlog=LISTEN_BACKLOG)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=LISTEN_BACKLOG)
    sock.setblocking(False)
    return sock


class PeerListener:
    """Accepts peers, pairs them through :class:`Pairing`, hands pairs to the forwarding engine.

    ``on_keys`` receives the replacement keys made when a session ends (the router link
    announces them); it is called from the engine's close callback, always on this loop.
    Forwarding happens on ``engine`` (this loop) when one is given or ``config.workers`` is 0,
    else on ``config.workers`` forwarding threads started by :meth:`start`.
    """

    def __init__(self, pool: KeyPool, config: PeerListenerConfig, *, engine: ForwardEngine | None = None,
                 on_keys: Callable[[list[PoolKey]], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.config = config
        self.engine: ForwardEngine | None = None
        self.threads: ForwardingThreads | None = None
        if engine is not None or config.workers <= 0:
            self.engine = engine if engine is not None else ForwardEngine(
                self.loop, session_rate=config.session_rate or None, global_rate=config.global_rate or None)
        else:
            share = config.global_rate / config.workers if config.global_rate else None
            self.threads = ForwardingThreads(config.workers, home=self.loop, engine_factory=lambda loop: (
                ForwardEngine(loop, session_rate=config.session_rate or None, global_rate=share)))
        self.on_keys = on_keys
        self.pairing: Pairing[_Pending] = Pairing(pool, timeout=config.pending_timeout)
        self.sessions: dict[int, ActiveSession] = {}
        self._session_ids = itertools.count(1)
        self._listener: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.started_at = self.loop.time()
        self.refused = 0
        self.stats = RelayStats()
        """Pairing latency, and peers closed before pairing by reason (``handshake_failures``)."""

    # ------------------------------------------------------------ lifecycle
    def start(self) -> tuple[str, int]:
        """Bind and start accepting; returns the bound address.

        Raises OSError if it cannot bind, RuntimeError if the forwarding threads cannot start.
        """
        sock = bind_listener(self.config.listen_host, self.config.port)
        if self.threads is not None:
            try:
                self.threads.start()
            except RuntimeError:
                sock.close()
                raise
        self._listener = sock
        self.started_at = self.loop.time()
        self.loop.add_reader(sock.fileno(), self._on_accept)
        host, port = sock.getsockname()[:2]
        return str(host), int(port)

    def close(self) -> None:
        """Stop accepting, drop pending connections and close every session."""
        sock, self._listener = self._listener, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for pending in list(self.pairing.expired(float("inf"))):
            self._close_pending(pending, None)
        if self.engine is not None:
            self.engine.close("relay stopping")
        if self.threads is not None:
            self.threads.close("relay stopping")

    @property
    def uptime(self) -> float:
        return self.loop.time() - self.started_at

    @property
    def pending(self) -> int:
        return len(self.pairing)

    def snapshots(self) -> list[SessionSnapshot]:
        return [s.snapshot() for s in self.sessions.values() if s.forward is not None]

    def disconnect(self, session_id: int) -> bool:
        """Drop a session (router's ``peer_connection_request``); a normal session end follows."""
        session = self.sessions.get(session_id)
        if session is None or session.forward is None:
            return False
        session.forward.close("disconnected by the router")
        return True

    # ---------------------------------------------------------------- accept
    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                log.error("Cannot accept a peer connection: %s", exc)
                return
            sock.setblocking(False)
            self.stats.accepted += 1
            pending = _Pending(sock, _address(addr))
            pending.accepted_at = self.loop.time()
            # Two connections per session MaxPeerCount allows, paired or not: nothing legitimate
            # needs more, since every pending peer holds one of the pool's keys.
            open_now = len(self.pairing) + 2 * len(self.sessions)
            if open_now >= 2 * self.pool.max_peer_count:
                self.refused += 1
                log.info("Peer %s refused: %d connections open, the limit for MaxPeerCount %d",
                         pending.address, open_now, self.pool.max_peer_count)
                sock.close()
                continue
            self.pairing.add(pending, self.loop.time())
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending.reader = PeerToRelayReader(self.config.max_message)
            self.loop.add_reader(pending.fd, self._on_readable, pending)
            self._arm_timer()

    def _on_readable(self, pending: _Pending) -> None:
        reader = pending.reader
        if reader is None:
            return
        if pending.watching:
            self._peek(pending)
            return
        try:
            # Never more than the message still needs: later bytes belong to the partner.
            data = pending.sock.recv(reader.wanted)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_pending(pending, f"connection failed before pairing: {exc.strerror or exc}")
            return
        if not data:
            self._close_pending(pending, "closed before sending its PeerToRelay")
            return
        try:
            message = reader.feed(data)
            if message is None:
                return
            paired = self.pairing.offer(pending, message)
        except AspiaProtocolError as exc:
            self._close_pending(pending, f"refused: {exc}")
            return
        if paired is None:
            pending.watching = True
            log.info("Peer %s presented key %d; waiting for its partner", pending.address, message.key_id)
            return
        self._start_session(paired)

    def _peek(self, pending: _Pending) -> None:
        """A waiting peer became readable: either it left (free its slot) or it sent early data."""
        try:
            data = pending.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._close_pending(pending, f"failed while waiting for its partner: {exc.strerror or exc}")
            return
        if not data:
            self._close_pending(pending, "left while waiting for its partner")
            return
        # Early data for the partner: leave it in the kernel and stop watching until pairing.
        self.loop.remove_reader(pending.fd)

    def _close_pending(self, pending: _Pending, reason: str | None, *, forget: bool = True) -> None:
        if forget:
            self.pairing.remove(pending)
        pending.reader = None
        with contextlib.suppress(Exception):
            self.loop.remove_reader(pending.fd)
        pending.sock.close()
        if reason is not None:
            self.stats.handshake_failures[pending_failure_label(reason)] += 1
            log.info("Peer %s: %s", pending.address, reason)

    # --------------------------------------------------------------- pairing
    def _start_session(self, paired: Paired[_Pending]) -> None:
        first, second = paired.first, paired.second
        for pending in (first, second):
            pending.reader = None
            with contextlib.suppress(Exception):
                self.loop.remove_reader(pending.fd)
        self.stats.pairing_latency.observe(self.loop.time() - first.accepted_at)
        session = ActiveSession(next(self._session_ids), paired.key_id, paired.info,
                                (first.address, second.address))
        self.sessions[session.session_id] = session
        idle = self.config.idle_timeout
        try:
            if self.threads is not None:
                # The worker owns both sockets from here; nothing of them stays on this loop.
                session.forward = self.threads.start_session(
                    first.sock, second.sock, idle_timeout=idle, on_close=self._session_closed,
                    context=session)
            else:
                assert self.engine is not None
                session.forward = self.engine.start(
                    first.sock, second.sock, idle_timeout=idle, on_close=self._session_closed,
                    context=session)
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("Cannot forward session %d: %s", session.session_id, exc)
            for pending in (first, second):
                pending.sock.close()
            self._session_closed(None, "error", session)
            return
        log.info("Session %d: peers %s and %s paired with key %d (host id %d, client user %r); "
                 "%d sessions active", session.session_id, first.address, second.address, paired.key_id,
                 paired.info.host_id, paired.info.client_user_name, len(self.sessions))

    def _session_closed(self, forward: ForwardSession | ThreadedSession | None, reason: str,
                        session: ActiveSession | None = None) -> None:
        if session is None:
            assert forward is not None
            context = forward.context
            assert isinstance(context, ActiveSession)
            session = context
        if self.sessions.pop(session.session_id, None) is None:
            return
        moved = forward.counters.total if forward is not None else 0
        log.info("Session %d ended (%s) after %d bytes; %d sessions active", session.session_id, reason,
                 moved, len(self.sessions))
        keys = self.pool.session_ended()
        if keys and self.on_keys is not None:
            self.on_keys(keys)

    # ----------------------------------------------------------------- timer
    def _arm_timer(self) -> None:
        when = self.pairing.next_deadline()
        if when is None or (self._timer_at is not None and self._timer_at <= when):
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        for pending in self.pairing.expired(self.loop.time()):
            self._close_pending(pending, f"not paired within {self.config.pending_timeout:g} s", forget=False)
        self._arm_timer()



def pending_failure_label(reason: str) -> str:
    """The metric label for why a peer was closed before pairing (no addresses, no numbers)."""
    for prefix, label in (("refused", "refused"), ("closed before", "closed_early"),
                          ("left while", "left_waiting"), ("not paired", "pending_timeout")):
        if reason.startswith(prefix):
            return label
    return "socket_error"
