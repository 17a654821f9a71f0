"""The Syncthing relay's asyncio shell: one port, two modes, sessions forwarded by the engine.

Every accepted connection is first peeked at: a TLS ClientHello (first byte 0x16) makes it a
protocol-mode connection (TLS with ALPN ``bep-relay``, then :class:`ProtocolRelay` messages); anything
else is a session-mode connection, read exactly as far as its JoinSessionRequest goes, so the bytes
after it (a device's TLS ClientHello, often in the same segment) stay in the kernel and reach the
partner first through the engine. Paired session sockets go to :class:`ForwardEngine` (splice(2)); rate
limits pause reading (:mod:`natrelay.engine.ratelimit`), so no relayed byte passes through Python.

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
from dataclasses import dataclass, field

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.limits import Admission, Limits
from natrelay.engine.ratelimit import SessionThrottle, TokenBucket
from natrelay.engine.session import ForwardSession
from natrelay.engine.timers import TimerWheel
from natrelay.syncthing import xdr
from natrelay.syncthing.deviceid import format_device_id
from natrelay.syncthing.protocol_conn import ProtocolConn
from natrelay.syncthing.relay import Action, Close, EndSession, ProtocolRelay, RelayConfig, Send
from natrelay.syncthing.sessions import AlreadyConnected, NotFound, Paired, Session, SessionTable, Waiting

log = logging.getLogger("natrelay.syncthing")

TLS_HANDSHAKE_BYTE = 0x16
#: Bytes peeked at first: a JoinSessionRequest (12-byte header, 4-byte length, 32-byte key) fits.
REQUEST_PEEK = 64
ACCEPTS_PER_WAKEUP = 64
#: After accept() fails (out of descriptors), wait this long before accepting again.
ACCEPT_PAUSE = 1.0
LISTEN_BACKLOG = 1024


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


class _Peeking:
    __slots__ = ("address", "fd", "ip", "sock")

    def __init__(self, sock: socket.socket, address: str, ip: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.ip = ip


class _SessionConn:
    """A session-mode connection until it is paired (or refused)."""

    __slots__ = ("address", "buf", "fd", "ip", "key", "sock", "watching")

    def __init__(self, sock: socket.socket, address: str, ip: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.ip = ip
        self.buf = bytearray()
        self.key: bytes | None = None
        self.watching = False


class SyncthingRelay:
    """A strelaysrv-compatible relay on the running loop."""

    def __init__(self, options: RelayOptions, tls: ssl.SSLContext, *,
                 engine: ForwardEngine | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.options = options
        self.tls = tls
        self.engine = engine if engine is not None else ForwardEngine(self.loop)
        cfg = options.config
        self.table: SessionTable[_SessionConn] = SessionTable(cfg.message_timeout)
        self.relay: ProtocolRelay[ProtocolConn] = ProtocolRelay(
            cfg, self.table, os.urandom, self._over_limit)
        self.admission = Admission(Limits(max_connections=0, max_per_ip=0, max_handshakes=512))
        self._incoming: TimerWheel[_Peeking | _SessionConn | ProtocolConn] = TimerWheel()
        self._tls_conns: set[ProtocolConn] = set()
        self._listener: socket.socket | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._global_bucket = (TokenBucket(options.global_rate, 2 * options.global_rate, self.loop.time())
                               if options.global_rate else None)
        self._throttles: dict[Session[_SessionConn], SessionThrottle] = {}
        self.protocol_connections = 0
        self.bytes_closed_sessions = 0
        self.sessions_started = 0
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
        self._listener = sock
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
        for item in self._incoming.expired(float("inf")):
            if isinstance(item, ProtocolConn):
                item._abort()
            else:
                self._drop(item, None)
        for s in self.table.all_pending():
            self._end_session(s, "relay stopping")
        for s in self.table.active_sessions():
            self._end_session(s, "relay stopping")
        for conn in list(self._tls_conns):
            conn.close()
        for conn in list(self._tls_conns):  # those that had something left to write
            conn._abort()
        self.engine.close("relay stopping")

    # ------------------------------------------------------------ counters
    @property
    def bytes_proxied(self) -> int:
        live = 0
        for s in self.table.active_sessions():
            fwd = s.forward
            if isinstance(fwd, ForwardSession):
                live += fwd.counters.total
        return self.bytes_closed_sessions + live

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
        for _ in range(ACCEPTS_PER_WAKEUP):
            try:
                sock, addr = listener.accept()
            except (BlockingIOError, InterruptedError):
                break  # (not return: the deadlines of what was accepted must arm the timer)
            except OSError as exc:  # EMFILE and friends: keep serving what we have
                log.error("Cannot accept a connection: %s; pausing accepts for %g s", exc, ACCEPT_PAUSE)
                # The listener stays readable: without a pause the loop would spin on it.
                self.loop.remove_reader(listener.fileno())
                self.loop.call_later(ACCEPT_PAUSE, self._resume_accepting)
                break
            sock.setblocking(False)
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            ip = str(addr[0]) if isinstance(addr, tuple) else ""
            self.admission.admit(ip)  # no caps configured: counts only
            item = _Peeking(sock, _address(addr), ip)
            self._incoming.schedule(item, self.loop.time() + self.options.config.message_timeout)
            self.loop.add_reader(item.fd, self._on_first_byte, item)
        self._rearm()

    def _resume_accepting(self) -> None:
        if self._listener is not None:
            self.loop.add_reader(self._listener.fileno(), self._on_accept)

    def _on_first_byte(self, item: _Peeking) -> None:
        try:
            # Enough to hold a whole JoinSessionRequest: the usual session-mode connection is
            # sorted and joined right here, with one more recv() and no further loop iteration.
            first = item.sock.recv(REQUEST_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(item, None)
            return
        if not first:
            self._drop(item, None)
            return
        deadline = self._incoming.deadline(item)
        self._incoming.cancel(item)
        if first[0] == TLS_HANDSHAKE_BYTE:
            self._start_tls(item, deadline)
            return
        conn = _SessionConn(item.sock, item.address, item.ip)
        if self._whole_request(conn, first):
            return
        # Only part of the request is here: read it as it comes (consuming it, so a client that
        # trickles never makes the poller spin on bytes left in the kernel).
        self._incoming.schedule(conn, self.loop.time() + self.options.config.message_timeout)
        self.loop.add_reader(conn.fd, self._on_session_readable, conn)  # replaces the peek in place
        self._on_session_readable(conn)

    def _whole_request(self, conn: _SessionConn, peeked: bytes) -> bool:
        """Handle a request that ``peeked`` holds entirely; False if more must be read first."""
        if len(peeked) < xdr.HEADER_SIZE:
            return False
        try:
            msg_type, length = xdr.parse_header(peeked[:xdr.HEADER_SIZE])
        except xdr.XdrError as exc:
            self._drop(conn, f"malformed request: {exc}")
            return True
        total = xdr.HEADER_SIZE + length
        if len(peeked) < total:
            return False
        try:
            # Exactly the request, which is in the kernel already: later bytes belong to the partner.
            conn.sock.recv(total)
            msg = xdr.decode_body(msg_type, peeked[xdr.HEADER_SIZE:total])
        except OSError as exc:
            self._drop(conn, f"failed before joining: {exc.strerror or exc}")
            return True
        except xdr.XdrError as exc:
            self._drop(conn, f"malformed request: {exc}")
            return True
        self._request(conn, msg)
        return True

    def _start_tls(self, item: _Peeking, deadline: float | None) -> None:
        refusal = self.admission.begin_handshake()
        if refusal is not None:
            log.info("Protocol connection from %s refused: %s", item.address, refusal)
            self._drop(item, None)
            return
        try:
            # The same descriptor from here on: the reader registered at accept stays, with a new
            # callback (replacing it in place costs no system call; removing it would cost two).
            sock = self.tls.wrap_socket(item.sock, server_side=True, do_handshake_on_connect=False)
        except (OSError, ValueError) as exc:
            log.info("TLS with %s cannot start: %s", item.address, exc)
            self.admission.end_handshake()
            self._drop(item, None)
            return
        self.protocol_connections += 1
        conn = ProtocolConn(self, sock, item.address, item.ip)
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

    def _drop(self, item: _Peeking | _SessionConn, reason: str | None,
              last: xdr.Message | None = None) -> None:
        self._incoming.cancel(item)
        with contextlib.suppress(Exception):
            self.loop.remove_reader(item.fd)
        if last is not None:
            with contextlib.suppress(OSError):
                item.sock.send(xdr.encode(last))
        item.sock.close()
        self.admission.release(item.ip)
        if reason is not None:
            log.info("Session connection from %s: %s", item.address, reason)

    # ------------------------------------------------------------ session mode
    def _on_session_readable(self, conn: _SessionConn) -> None:
        if conn.watching:
            self._watch(conn)
            return
        decoder_want = xdr.HEADER_SIZE - len(conn.buf)
        if decoder_want <= 0:
            try:
                _, length = xdr.parse_header(bytes(conn.buf[:xdr.HEADER_SIZE]))
            except xdr.XdrError as exc:
                self._drop(conn, f"malformed request: {exc}")
                return
            decoder_want = xdr.HEADER_SIZE + length - len(conn.buf)
        try:
            # Never more than the request: later bytes belong to the partner.
            data = conn.sock.recv(decoder_want) if decoder_want > 0 else b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._drop(conn, f"failed before joining: {exc.strerror or exc}")
            return
        if decoder_want > 0 and not data:
            self._drop(conn, None)
            return
        conn.buf += data
        if len(conn.buf) < xdr.HEADER_SIZE:
            return
        try:
            msg_type, length = xdr.parse_header(bytes(conn.buf[:xdr.HEADER_SIZE]))
            if len(conn.buf) < xdr.HEADER_SIZE + length:
                return
            msg = xdr.decode_body(msg_type, bytes(conn.buf[xdr.HEADER_SIZE:]))
        except xdr.XdrError as exc:
            self._drop(conn, f"malformed request: {exc}")
            return
        conn.buf = bytearray()
        self._request(conn, msg)

    def _request(self, conn: _SessionConn, msg: xdr.Message) -> None:
        if not isinstance(msg, xdr.JoinSessionRequest):
            self._drop(conn, "unexpected message", xdr.RESPONSE_UNEXPECTED_MESSAGE)
            return
        self._join_session(conn, msg.key)

    def _join_session(self, conn: _SessionConn, key: bytes) -> None:
        result = self.table.join(key, conn)
        if isinstance(result, NotFound):
            self._drop(conn, "unknown session key", xdr.RESPONSE_NOT_FOUND)
            return
        if isinstance(result, AlreadyConnected):
            self._drop(conn, "session side already connected", xdr.RESPONSE_ALREADY_CONNECTED)
            return
        conn.key = key
        if not self._send_small(conn, xdr.RESPONSE_SUCCESS):
            if isinstance(result, Waiting):
                self.table.leave(key, conn)
            else:
                # Paired: the partner is ours to close too; the session cannot start.
                self.table.end(result.session)
                self._close_waiting(result.session, "partner failed")
            self._drop(conn, "could not answer the join")
            return
        self._incoming.cancel(conn)
        if isinstance(result, Waiting):
            # Waiting for the partner: watch only for the device giving up (MSG_PEEK), so early
            # bytes stay in the kernel for the partner. (Replaces the accept-time callback in place.)
            conn.watching = True
            self.loop.add_reader(conn.fd, self._on_session_readable, conn)
            return
        assert isinstance(result, Paired)
        self._start_session(result)

    def _send_small(self, conn: _SessionConn, msg: xdr.Message) -> bool:
        data = xdr.encode(msg)
        try:
            return conn.sock.send(data) == len(data)
        except OSError:
            return False

    def _watch(self, conn: _SessionConn) -> None:
        try:
            data = conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if conn.key is not None:
                self.table.leave(conn.key, conn)
            self._drop(conn, "left while waiting for its partner")
            return
        # Early bytes for the partner: leave them in the kernel, stop watching.
        conn.watching = False
        self.loop.remove_reader(conn.fd)

    def _start_session(self, paired: Paired[_SessionConn]) -> None:
        s = paired.session
        for c in (paired.server, paired.client):
            c.watching = False
        try:
            # Our readers stay registered: the engine's replace them in place (no system call).
            fwd = self.engine.start(paired.server.sock, paired.client.sock,
                                    idle_timeout=self.options.config.network_timeout,
                                    on_close=self._session_closed, context=s, nodelay_set=True)
        except (OSError, ValueError, RuntimeError) as exc:
            log.error("Cannot forward a session: %s", exc)
            for c in (paired.server, paired.client):
                with contextlib.suppress(Exception):
                    self.loop.remove_reader(c.fd)
                c.sock.close()
                self.admission.release(c.ip)
            self.table.end(s)
            return
        s.forward = fwd
        self.sessions_started += 1
        buckets: list[TokenBucket] = []
        if self.options.per_session_rate:
            rate = self.options.per_session_rate
            buckets.append(TokenBucket(rate, 2 * rate, self.loop.time()))
        if self._global_bucket is not None:
            buckets.append(self._global_bucket)
        if buckets:
            self._throttles[s] = SessionThrottle(self.loop, fwd, buckets)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Session %s <-> %s started (%s, %s); %d active", format_device_id(s.server_id),
                      format_device_id(s.client_id), paired.server.address, paired.client.address,
                      self.table.active)

    def _session_closed(self, fwd: ForwardSession, reason: str) -> None:
        s = fwd.context
        assert isinstance(s, Session)
        throttle = self._throttles.pop(s, None)
        if throttle is not None:
            throttle.cancel()
        self.bytes_closed_sessions += fwd.counters.total
        for c in s.conns:
            if c is not None:
                self.admission.release(c.ip)
        self.table.end(s)
        log.debug("Session ended (%s) after %d bytes", reason, fwd.counters.total)

    def _end_session(self, s: Session[_SessionConn], reason: str) -> None:
        fwd = s.forward
        if isinstance(fwd, ForwardSession):
            fwd.close(reason)  # _session_closed follows
            return
        self.table.end(s)
        self._close_waiting(s, reason)

    def _close_waiting(self, s: Session[_SessionConn], reason: str) -> None:
        for i, c in enumerate(s.conns):
            if c is not None:
                s.conns[i] = None
                self._drop(c, reason)

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
                self._end_session(action.session, action.reason)

    def _rearm(self) -> None:
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
        for item in self._incoming.expired(now):
            if isinstance(item, ProtocolConn):
                item.handshake_expired()
            else:
                self._drop(item, f"no request within {self.options.config.message_timeout:g} s")
        for s in self.table.expired(now):
            self._close_waiting(s, f"partner did not join within {self.options.config.message_timeout:g} s")
        self._execute(self.relay.tick(now))
        self._rearm()


def _address(addr: object) -> str:
    if isinstance(addr, tuple) and len(addr) >= 2:
        host = str(addr[0])
        if host.startswith("::ffff:"):
            host = host[7:]
        return f"[{host}]:{addr[1]}" if ":" in host else f"{host}:{addr[1]}"
    return str(addr)
