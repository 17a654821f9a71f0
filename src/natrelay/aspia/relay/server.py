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

What happens after pairing (the forwarding engine or threads, session lifetimes, what a
session's end gives back) is :mod:`natrelay.aspia.relay.forwarding`'s; this module ends where a
pair is handed over.

Flood guard (issue 8): before its ``PeerToRelay`` proves that a connection holds one of the
pool's keys, it is unauthenticated and held to :mod:`natrelay.engine.floodguard`'s rules (a
first-message deadline of a few seconds, fair pending slots per source, a rate of connections
per source that do not authenticate) and to a cap on the bytes it may send. Every connection,
authenticated or not, counts against :class:`natrelay.engine.limits.Admission`'s total and
per-source caps until it closes, and a paired session ends after ``max_session`` seconds. Each
refusal or guard close is counted under a reason in :attr:`PeerListener.refusals` /
:attr:`PeerListener.guard_closes` and logged at debug level, throttled; a summary of the counts
reaches the info log at most every ``report_interval`` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
from collections import Counter
from collections.abc import Callable

from natrelay.aspia.errors import AspiaProtocolError
from natrelay.aspia.messages import PeerToRelayReader
from natrelay.aspia.relay.forwarding import ActiveSession, ForwardedSessions
from natrelay.aspia.relay.keypool import KeyPool, PoolKey
from natrelay.aspia.relay.listener_config import PeerListenerConfig
from natrelay.aspia.relay.pairing import Paired, Pairing
from natrelay.aspia.relay.stats import SessionSnapshot
from natrelay.engine.floodguard import CLOSED_EVICTED, CLOSED_FIRST_MESSAGE_TIMEOUT, FloodGuard
from natrelay.engine.forward import ForwardEngine
from natrelay.engine.limits import Admission
from natrelay.engine.refusals import LogLimiter
from natrelay.engine.sources import source_key
from natrelay.engine.stats import RelayStats
from natrelay.engine.threads import ForwardingThreads

log = logging.getLogger("natrelay.aspia.relay")

ACCEPTS_PER_WAKEUP = 64
"""At most; fewer when the pending cap is small (see :meth:`PeerListener._accepts_per_wakeup`)."""
LISTEN_BACKLOG = 1024

# Reasons beyond the flood guard's own (engine/floodguard.py), as counted in refusals/guard_closes.
REFUSED_CONNECTIONS_TOTAL = "connections_total"
REFUSED_CONNECTIONS_PER_IP = "connections_per_ip"
REFUSED_PEER_COUNT = "peer_count"
CLOSED_TOO_BIG = "too_big_before_auth"
CLOSED_SESSION_LIFETIME = "session_lifetime"

class _Pending:
    """An accepted peer connection that has not paired yet."""

    __slots__ = ("accepted_at", "address", "consumed", "fd", "reader", "sock", "source", "watching")

    def __init__(self, sock: socket.socket, address: str, source: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.source = source
        """Where the admission slot is counted (engine.sources.source_key)."""
        self.consumed = 0
        self.reader: PeerToRelayReader | None = None
        self.watching = False
        self.accepted_at = 0.0


def _ip(addr: object) -> str:
    if isinstance(addr, tuple) and addr:
        return str(addr[0])
    return str(addr)


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
    else on ``config.workers`` forwarding threads started by :meth:`start` (see
    :class:`ForwardedSessions`, :attr:`forwarding`).
    """

    def __init__(self, pool: KeyPool, config: PeerListenerConfig, *, engine: ForwardEngine | None = None,
                 on_keys: Callable[[list[PoolKey]], None] | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.pool = pool
        self.config = config
        self.forwarding = ForwardedSessions(
            self.loop, engine=engine, workers=config.workers, session_rate=config.session_rate,
            global_rate=config.global_rate, idle_timeout=config.idle_timeout, max_session=config.max_session,
            on_end=self._session_ended)
        self.on_keys = on_keys
        self.pairing: Pairing[_Pending] = Pairing(pool, timeout=config.pending_timeout)
        self._listener: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.started_at = self.loop.time()
        self.admission = Admission(config.limits)
        self.guard: FloodGuard[_Pending] = FloodGuard(config.guard)
        self._throttle = LogLimiter(interval=1.0, burst=10)
        """Lines about unauthenticated peers: at most ten a second, however many peers."""
        self._report: asyncio.TimerHandle | None = None
        self._reported: tuple[int, int] = (0, 0)
        # Exact counters (the HTTP surface reads these): connections accepted by the kernel,
        # refused at once (total and by reason), and closed later by a guard rule (by reason).
        self.accepted = 0
        self.refused = 0
        # Under a flood each accepted connection can evict an older unauthenticated one. Accepting
        # at most a quarter of the pending cap per wakeup guarantees that a connection admitted in
        # one loop iteration is still there when its PeerToRelay is read in the next.
        cap = config.guard.max_pending
        self._accepts_per_wakeup = max(1, min(ACCEPTS_PER_WAKEUP, cap // 4)) if cap else ACCEPTS_PER_WAKEUP
        self.refusals: Counter[str] = Counter()
        self.guard_closes: Counter[str] = Counter()
        self.stats = RelayStats()
        """Pairing latency, and peers closed before pairing by reason (``handshake_failures``)."""

    # ------------------------------------------------------------ lifecycle
    def start(self) -> tuple[str, int]:
        """Bind and start accepting; returns the bound address.

        Raises OSError if it cannot bind, RuntimeError if the forwarding threads cannot start.
        """
        sock = bind_listener(self.config.listen_host, self.config.port)
        try:
            self.forwarding.start_threads()
        except RuntimeError:
            sock.close()
            raise
        self._listener = sock
        self.started_at = self.loop.time()
        self.loop.add_reader(sock.fileno(), self._on_accept)
        self._report = self.loop.call_later(self.config.report_interval, self._on_report)
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
        if self._report is not None:
            self._report.cancel()
            self._report = None
        for pending in list(self.pairing.expired(float("inf"))):
            self._close_pending(pending, None)
        self.forwarding.close("relay stopping")

    @property
    def engine(self) -> ForwardEngine | None:
        """The engine forwarding on this loop; None when forwarding threads do it."""
        return self.forwarding.engine

    @property
    def threads(self) -> ForwardingThreads | None:
        return self.forwarding.threads

    @property
    def sessions(self) -> dict[int, ActiveSession]:
        """The paired sessions by ID."""
        return self.forwarding.sessions

    @property
    def uptime(self) -> float:
        return self.loop.time() - self.started_at

    @property
    def pending(self) -> int:
        return len(self.pairing)

    def snapshots(self) -> list[SessionSnapshot]:
        return self.forwarding.snapshots()

    def disconnect(self, session_id: int) -> bool:
        """Drop a session (router's ``peer_connection_request``); a normal session end follows."""
        return self.forwarding.disconnect(session_id)

    # ---------------------------------------------------------------- accept
    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        for _ in range(self._accepts_per_wakeup):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                self._log_throttled(logging.ERROR, self.loop.time(), "Cannot accept a peer connection: %s",
                                    exc)
                return
            sock.setblocking(False)
            self.accepted += 1
            pending = _Pending(sock, _address(addr), source_key(_ip(addr)))
            pending.accepted_at = self.loop.time()
            if not self._admit(pending):
                sock.close()
                continue
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            pending.reader = PeerToRelayReader(self.config.max_message)
            self.forwarding.watch.add_reader(pending.fd, functools.partial(self._on_readable, pending))
            # A real peer writes its PeerToRelay right after connecting: it is often here already,
            # and reading it now takes the connection out of the flood guard's reach at once.
            self._on_readable(pending)
            self._arm_timer()

    def _admit(self, pending: _Pending) -> bool:
        """Take every slot ``pending`` needs, or count why not (the caller closes it then)."""
        now = self.loop.time()
        # Two connections per session MaxPeerCount allows, among those that hold a key: nothing
        # legitimate needs more. Unauthenticated ones are the flood guard's to bound.
        keyed = len(self.pairing) - self.guard.pending + 2 * len(self.sessions)
        if keyed >= 2 * self.pool.max_peer_count:
            self._refuse(pending, REFUSED_PEER_COUNT, now)
            return False
        why = self.admission.admit(pending.source)
        if why is not None:
            per_ip = self.config.limits.max_per_ip and self.admission.per_ip(pending.source) >= \
                self.config.limits.max_per_ip
            self._refuse(pending, REFUSED_CONNECTIONS_PER_IP if per_ip else REFUSED_CONNECTIONS_TOTAL, now)
            return False
        decision = self.guard.admit(pending, pending.source, now)
        if decision.refused is not None:
            self.admission.release(pending.source)
            self._refuse(pending, decision.refused, now)
            return False
        if decision.evicted is not None:
            self._guard_close(decision.evicted, CLOSED_EVICTED)
        self.pairing.add(pending, now)
        return True

    def _refuse(self, pending: _Pending, reason: str, now: float) -> None:
        self.refused += 1
        self.refusals[reason] += 1
        self._log_throttled(logging.DEBUG, now, "Peer %s refused: %s", pending.address, reason)

    def _guard_close(self, pending: _Pending, reason: str) -> None:
        self.guard_closes[reason] += 1
        self._log_throttled(logging.DEBUG, self.loop.time(), "Peer %s closed: %s", pending.address, reason)
        self._close_pending(pending, None)

    def _log_throttled(self, level: int, now: float, fmt: str, *args: object) -> None:
        """A line about one unauthenticated peer: at most a few per second, however many peers."""
        if not log.isEnabledFor(level):
            return
        held = self._throttle.allow("peer", now)
        if held is None:
            return
        if held:
            fmt += " (%d similar lines suppressed)"
            args = (*args, held)
        log.log(level, fmt, *args)

    def _on_readable(self, pending: _Pending) -> None:
        reader = pending.reader
        if reader is None:
            return
        if pending.watching:
            self._peek(pending)
            return
        recv = pending.sock.recv
        while True:
            try:
                # Never more than the message still needs: later bytes belong to the partner.
                data = recv(reader.wanted)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._close_pending(pending, f"connection failed before pairing: {exc.strerror or exc}")
                return
            if not data:
                self._close_pending(pending, "closed before sending its PeerToRelay")
                return
            pending.consumed += len(data)
            try:
                message = reader.feed(data)
                if message is None:
                    if pending.consumed + reader.wanted > self.config.max_bytes_before_auth:
                        self._guard_close(pending, CLOSED_TOO_BIG)
                        return
                    # A peer writes the length and the body at once: read on now rather than
                    # after another turn of the loop (one wake-up per peer, not two).
                    continue
                paired = self.pairing.offer(pending, message)
            except AspiaProtocolError as exc:
                self._close_pending(pending, f"refused: {exc}")
                return
            break
        # A valid key: no longer the flood guard's business (and its rate token comes back).
        self.guard.authenticated(pending, self.loop.time())
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
        self.forwarding.watch.remove_reader(pending.fd)

    def _close_pending(self, pending: _Pending, reason: str | None, *, forget: bool = True) -> None:
        if forget:
            self.pairing.remove(pending)
        unauthenticated = self.guard.remove(pending)
        self.admission.release(pending.source)
        pending.reader = None
        with contextlib.suppress(Exception):
            self.forwarding.watch.remove_reader(pending.fd)
        pending.sock.close()
        if reason is None:
            return
        self.stats.handshake_failures[pending_failure_label(reason)] += 1
        if unauthenticated:  # anyone can cause these lines: throttle them
            self._log_throttled(logging.INFO, self.loop.time(), "Peer %s: %s", pending.address, reason)
        else:
            log.info("Peer %s: %s", pending.address, reason)

    # --------------------------------------------------------------- pairing
    def _start_session(self, paired: Paired[_Pending]) -> None:
        first, second = paired.first, paired.second
        for pending in (first, second):
            pending.reader = None
        self.stats.pairing_latency.observe(self.loop.time() - first.accepted_at)
        session = self.forwarding.start(paired.key_id, paired.info, (first.sock, second.sock),
                                        (first.address, second.address), (first.source, second.source))
        self._arm_timer()
        if session is None:
            return
        log.info("Session %d: peers %s and %s paired with key %d (host id %d, client user %r); "
                 "%d sessions active", session.session_id, first.address, second.address, paired.key_id,
                 paired.info.host_id, paired.info.client_user_name, len(self.sessions))

    def _session_ended(self, session: ActiveSession) -> None:
        """Its admission slots come back, and the pool makes a replacement key (§12 bug 1)."""
        for source in session.sources:
            self.admission.release(source)
        keys = self.pool.session_ended()
        if keys and self.on_keys is not None:
            self.on_keys(keys)

    # ----------------------------------------------------------------- timer
    def _arm_timer(self) -> None:
        candidates = [t for t in (self.pairing.next_deadline(), self.guard.next_deadline(),
                                  self.forwarding.next_deadline()) if t is not None]
        if not candidates:
            return
        when = min(candidates)
        if self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        for pending in self.guard.expired(now):
            self._guard_close(pending, CLOSED_FIRST_MESSAGE_TIMEOUT)
        for pending in self.pairing.expired(now):
            self._close_pending(pending, f"not paired within {self.config.pending_timeout:g} s", forget=False)
        for session in self.forwarding.expired(now):
            if session.forward is not None:
                self.guard_closes[CLOSED_SESSION_LIFETIME] += 1
                session.forward.close(f"session lifetime of {self.config.max_session:g} s reached")
        self._arm_timer()

    def _on_report(self) -> None:
        """Refusals are counted, not logged one by one: say what changed, once per interval."""
        self._report = self.loop.call_later(self.config.report_interval, self._on_report)
        totals = (self.refused, sum(self.guard_closes.values()))
        if totals == self._reported:
            return
        self._reported = totals
        log.info("Flood guard since start: %d connections accepted, %d refused %s, %d closed %s; "
                 "%d waiting for their PeerToRelay, %d open", self.accepted, self.refused,
                 dict(sorted(self.refusals.items())), totals[1], dict(sorted(self.guard_closes.items())),
                 self.guard.pending, self.admission.connections)


def pending_failure_label(reason: str) -> str:
    """The metric label for why a peer was closed before pairing (no addresses, no numbers)."""
    for prefix, label in (("refused", "refused"), ("closed before", "closed_early"),
                          ("left while", "left_waiting"), ("not paired", "pending_timeout")):
        if reason.startswith(prefix):
            return label
    return "socket_error"
