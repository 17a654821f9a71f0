"""The Syncthing relay's asyncio shell: one port, two modes, sessions forwarded by the engine.

Every accepted connection is first peeked at: a TLS ClientHello (first byte 0x16) makes it a
protocol-mode connection (TLS with ALPN ``bep-relay``, then :class:`ProtocolRelay` messages,
:mod:`natrelay.syncthing.protocol_conn`); anything else is a session-mode connection, handed to
:mod:`natrelay.syncthing.session_mode` (JoinSessionRequest, pairing, then :class:`ForwardEngine`).
This module holds what both share: the listener, the sorting, the admission counts, the lifecycle
and the time.

All deadlines of the relay (joins, pings, network timeouts, pending sessions, session-mode requests)
are in sans-IO wheels; one loop timer is armed at the earliest of them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import ssl
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.limits import Admission, Limits
from natrelay.engine.timers import TimerWheel
from natrelay.syncthing.protocol_conn import ProtocolConn, server_tls
from natrelay.syncthing.relay import Action, Close, EndSession, ProtocolRelay, RelayConfig, Send
from natrelay.syncthing.session_mode import Peeking, SessionConn, SessionMode
from natrelay.syncthing.sessions import SessionTable

log = logging.getLogger("natrelay.syncthing")

TLS_HANDSHAKE_BYTE = 0x16
#: Bytes peeked at first: a JoinSessionRequest (12-byte header, 4-byte length, 32-byte key) fits.
REQUEST_PEEK = 64
ACCEPTS_PER_WAKEUP = 64
#: After accept() fails (out of descriptors), wait this long before accepting again.
ACCEPT_PAUSE = 1.0
LISTEN_BACKLOG = 1024
#: Linux copies these from the listener to every socket it accepts (so one setsockopt at bind
#: serves them all); elsewhere they are set on each accepted socket.
_INHERITED_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY), (socket.SOL_SOCKET, socket.SO_KEEPALIVE))
_OPTIONS_INHERITED = sys.platform.startswith("linux")
#: accept(2) without socket.accept()'s Python wrapper: (descriptor, address). The wrapper costs ~20 us
#: more per connection (two enum conversions, a default-timeout check), as much as all the rest of
#: sorting a connection does.
_raw_accept: Callable[[socket.socket], tuple[int, Any]] = socket.socket._accept  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RelayOptions:
    """The relay's settings (strelaysrv's flags; times in seconds, rates in bytes/s, 0 = none)."""

    host: str = ""
    port: int = 22067
    config: RelayConfig = field(default_factory=RelayConfig)
    per_session_rate: int = 0
    global_rate: int = 0
    max_sessions: int = 0
    """Active sessions beyond which joins get RelayFull (0: only the descriptor limit applies)."""
    max_connections: int = 0
    """Connections beyond which the relay is "over its limits" (0: 80% of the descriptor limit)."""

    def __post_init__(self) -> None:
        for name in ("per_session_rate", "global_rate", "max_sessions", "max_connections"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (0 = none), got {getattr(self, name)}")


class SyncthingRelay:
    """A strelaysrv-compatible relay on the running loop."""

    def __init__(self, options: RelayOptions, tls: ssl.SSLContext, *,
                 engine: ForwardEngine | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.options = options
        self.tls = tls
        self.engine = engine if engine is not None else ForwardEngine(self.loop)
        self.admission = Admission(Limits(max_connections=0, max_per_ip=0, max_handshakes=512))
        self._incoming: TimerWheel[Peeking | SessionConn | ProtocolConn] = TimerWheel()
        self.sessions = SessionMode(self.loop, options, self.admission, self._incoming, self.engine)
        self.table: SessionTable[SessionConn] = self.sessions.table
        self.relay: ProtocolRelay[ProtocolConn] = ProtocolRelay(
            options.config, self.table, os.urandom, self._over_limit)
        self._tls_conns: set[ProtocolConn] = set()
        self._listener: socket.socket | None = None
        self._family = socket.AF_INET
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.protocol_connections = 0
        cfg = options.config
        self._shortest_timeout = min(cfg.message_timeout, cfg.ping_interval, cfg.network_timeout)
        self.started_at = self.loop.time()
        self._descriptor_limit = options.max_connections or self._default_connection_limit()

    # ------------------------------------------------------------ lifecycle
    def start(self) -> tuple[str, int]:
        """Bind and accept; returns the bound address. Raises OSError if the port cannot be bound."""
        host = self.options.host
        if not host:
            if socket.has_dualstack_ipv6():
                sock = socket.create_server(("::", self.options.port), family=socket.AF_INET6,
                                            backlog=LISTEN_BACKLOG, dualstack_ipv6=True)
            else:  # pragma: no cover
                sock = socket.create_server(("0.0.0.0", self.options.port), backlog=LISTEN_BACKLOG)
        else:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.create_server((host, self.options.port), family=family, backlog=LISTEN_BACKLOG)
        sock.setblocking(False)
        for level, option in _INHERITED_OPTIONS:
            with contextlib.suppress(OSError):
                sock.setsockopt(level, option, 1)
        self._listener = sock
        self._family = sock.family
        self.loop.add_reader(sock.fileno(), self._on_accept)
        bound = sock.getsockname()
        if self.relay.config.session_port == 0:
            # An ephemeral port (tests, benchmarks): invitations name the port we got.
            self.relay.config = dataclasses.replace(self.relay.config, session_port=int(bound[1]))
        return str(bound[0]), int(bound[1])

    def close(self) -> None:
        sock, self._listener = self._listener, None
        if sock is not None:
            self.loop.remove_reader(sock.fileno())
            sock.close()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        for item in self._incoming.expired(float("inf")):
            if isinstance(item, ProtocolConn):
                item._abort()
            else:
                self.sessions.drop(item, None)
        for s in self.table.all_pending():
            self.sessions.end_session(s, "relay stopping")
        for s in self.table.active_sessions():
            self.sessions.end_session(s, "relay stopping")
        for conn in list(self._tls_conns):
            conn.close()
        for conn in list(self._tls_conns):  # those that had something left to write
            conn._abort()
        self.engine.close("relay stopping")

    # ------------------------------------------------------------ counters
    @property
    def bytes_proxied(self) -> int:
        return self.sessions.bytes_proxied

    @property
    def sessions_started(self) -> int:
        return self.sessions.sessions_started

    def _default_connection_limit(self) -> int:
        try:
            import resource

            soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        except (ImportError, ValueError, OSError):  # pragma: no cover
            return 0
        if soft == resource.RLIM_INFINITY or soft <= 0:
            return 0
        # strelaysrv assumes 20% of the descriptors are used elsewhere.
        return soft * 80 // 100

    def _over_limit(self) -> bool:
        limit = self._descriptor_limit
        # Every open connection counts once: protocol, waiting and forwarded session sockets.
        if limit and self.admission.connections >= limit:
            return True
        cap = self.options.max_sessions
        return bool(cap and self.table.active >= cap)

    # ------------------------------------------------------------ accept and sort
    def _on_accept(self) -> None:
        listener = self._listener
        if listener is None:
            return
        family = self._family
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                fd, addr = _raw_accept(listener)
            except (BlockingIOError, InterruptedError):
                break  # (not return: the deadlines of what was accepted must arm the timer)
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                log.error("Cannot accept a connection: %s; pausing accepts for %g s", exc, ACCEPT_PAUSE)
                # The listener stays readable: without a pause the loop would spin on it.
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                break
            sock = socket.socket(family, socket.SOCK_STREAM, 0, fd)
            sock.setblocking(False)
            if not _OPTIONS_INHERITED:  # pragma: no cover - Linux inherits them from the listener
                with contextlib.suppress(OSError):
                    for level, option in _INHERITED_OPTIONS:
                        sock.setsockopt(level, option, 1)
            ip = str(addr[0]) if isinstance(addr, tuple) else ""
            self.admission.admit(ip)  # no caps configured: counts only
            item = Peeking(sock, _address(addr), ip)
            self._incoming.schedule(item, self.loop.time() + self.options.config.message_timeout)
            self.loop.add_reader(item.fd, self._on_first_byte, item)
        self._rearm()

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def _on_first_byte(self, item: Peeking) -> None:
        try:
            # Enough to hold a whole JoinSessionRequest: the usual session-mode connection is
            # sorted and joined right here, with one more recv() and no further loop iteration.
            first = item.sock.recv(REQUEST_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.sessions.drop(item, None)
            return
        if not first:
            self.sessions.drop(item, None)
            return
        deadline = self._incoming.deadline(item)
        self._incoming.cancel(item)
        if first[0] == TLS_HANDSHAKE_BYTE:
            self._start_tls(item, deadline)
            return
        self.sessions.begin(item, first)

    def _start_tls(self, item: Peeking, deadline: float | None) -> None:
        refusal = self.admission.begin_handshake()
        if refusal is not None:
            log.info("Protocol connection from %s refused: %s", item.address, refusal)
            self.sessions.drop(item, None)
            return
        try:
            # The same descriptor from here on: the reader registered at accept stays, with a new
            # callback (replacing it in place costs no system call; removing it would cost two).
            tls = server_tls(self.tls, item.sock)
        except (OSError, ValueError) as exc:
            log.info("TLS with %s cannot start: %s", item.address, exc)
            self.admission.end_handshake()
            self.sessions.drop(item, None)
            return
        self.protocol_connections += 1
        conn = ProtocolConn(self, item.sock, tls, item.address, item.ip)
        self._tls_conns.add(conn)
        # The handshake must be over by the deadline set at accept (strelaysrv's message timeout).
        self._incoming.schedule(conn, deadline or self.loop.time() + self.options.config.message_timeout)
        self.loop.add_reader(conn.fd, conn.on_readable)
        conn.on_readable()

    def _handshake_done(self, conn: ProtocolConn) -> None:
        """The handshake ended (done or failed): its slot and its deadline are free."""
        self.admission.end_handshake()
        self._incoming.cancel(conn)

    def _connection_gone(self, conn: ProtocolConn) -> None:
        self._tls_conns.discard(conn)
        self.protocol_connections -= 1
        self.admission.release(conn.ip)

    # ------------------------------------------------------------ actions and time
    def _execute(self, actions: list[Action[ProtocolConn]]) -> None:
        for action in actions:
            if isinstance(action, Send):
                action.conn.send(action.message)
            elif isinstance(action, Close):
                if log.isEnabledFor(logging.DEBUG):  # device IDs are formatted only when logged
                    log.debug("%s (%s): closing: %s", action.conn.address, action.conn._name(),
                              action.reason)
                if action.abort:
                    action.conn._abort()
                else:
                    action.conn.close()
            elif isinstance(action, EndSession):
                self.sessions.end_session(action.session, action.reason)

    def _rearm(self) -> None:
        """Arm the loop timer at the earliest deadline of the three wheels (after events that add some).

        Every deadline the relay sets is at least the shortest of its timeouts after the moment it is
        set (an accepted connection's message timeout, a pending session's, a protocol connection's
        ping or network timeout; a deadline that moves only moves later). So while the timer is armed
        no later than that far ahead, nothing set now can be earlier, and the wheels need not be
        asked: the usual case on a busy relay, where the three wheels cost 12 look-ups per pairing.
        (A deadline set earlier in the same callback, at a ``loop.time()`` a little before this one,
        may be served that little later than it was set for: microseconds, against the timer's 10 ms
        of slack.)
        """
        timer_at = self._timer_at
        if timer_at is not None and timer_at <= self.loop.time() + self._shortest_timeout:
            return
        candidates = [d for d in (self.relay.next_deadline(), self.table.next_deadline(),
                                  self._incoming.next_deadline()) if d is not None]
        if not candidates:
            return
        when = min(candidates)
        if self._timer is not None and self._timer_at is not None and self._timer_at <= when:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = when
        self._timer = self.loop.call_at(when + 0.01, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        now = self.loop.time()
        timeout = self.options.config.message_timeout
        for item in self._incoming.expired(now):
            if isinstance(item, ProtocolConn):
                item.handshake_expired()
            else:
                self.sessions.drop(item, f"no request within {timeout:g} s")
        for s in self.table.expired(now):
            self.sessions.close_waiting(s, f"partner did not join within {timeout:g} s")
        self._execute(self.relay.tick(now))
        self._rearm()


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)
