"""The Syncthing relay's session mode: plain connections that join a session, pairing, the engine handoff.

A connection whose first byte is not a TLS ClientHello is a session-mode connection: it sends one
JoinSessionRequest with a key from an invitation, gets a Response, and once its partner has joined
too the two sockets go to :class:`ForwardEngine` (splice(2)) with the session's rate limits. The
request is read exactly as far as it goes, so the bytes after it (a device's TLS ClientHello, often
in the same segment) stay in the kernel and reach the partner first through the engine; a device
waiting for its partner is watched with MSG_PEEK only for giving up.

This is the half of the relay that owns :class:`SessionTable` and the forwarded sessions; the
server (:mod:`natrelay.syncthing.server`) accepts, sorts, runs protocol mode and the timer, and
hands a session-mode connection here from its first peek.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from typing import TYPE_CHECKING

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.limits import Admission
from natrelay.engine.ratelimit import SessionThrottle, TokenBucket
from natrelay.engine.session import ForwardSession
from natrelay.engine.timers import TimerWheel
from natrelay.syncthing import xdr
from natrelay.syncthing.deviceid import format_device_id
from natrelay.syncthing.sessions import AlreadyConnected, NotFound, Paired, Session, SessionTable, Waiting

if TYPE_CHECKING:
    from natrelay.syncthing.protocol_conn import ProtocolConn
    from natrelay.syncthing.server import RelayOptions

log = logging.getLogger("natrelay.syncthing")

#: The answer to every good join, encoded once.
_SUCCESS = xdr.encode(xdr.RESPONSE_SUCCESS)


class Peeking:
    """An accepted connection whose first byte has not been seen yet."""

    __slots__ = ("address", "fd", "ip", "sock")

    def __init__(self, sock: socket.socket, address: str, ip: str) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.address = address
        self.ip = ip


class SessionConn:
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


class SessionMode:
    """Session-mode connections of one relay, from the first peek to the end of their session."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: RelayOptions, admission: Admission,
                 incoming: TimerWheel[Peeking | SessionConn | ProtocolConn], engine: ForwardEngine) -> None:
        self.loop = loop
        self.options = options
        self.admission = admission
        self.engine = engine
        self._incoming = incoming
        self.table: SessionTable[SessionConn] = SessionTable(options.config.message_timeout)
        self._global_bucket = (TokenBucket(options.global_rate, 2 * options.global_rate, loop.time())
                               if options.global_rate else None)
        #: The rate limiters of the live sessions that have any.
        self.throttles: dict[Session[SessionConn], SessionThrottle] = {}
        self.bytes_closed_sessions = 0
        self.sessions_started = 0

    @property
    def bytes_proxied(self) -> int:
        live = 0
        for s in self.table.active_sessions():
            fwd = s.forward
            if isinstance(fwd, ForwardSession):
                live += fwd.counters.total
        return self.bytes_closed_sessions + live

    # ------------------------------------------------------------ the request
    def begin(self, item: Peeking, first: bytes) -> None:
        """``item`` is a session-mode connection; ``first`` is what the server's peek saw."""
        conn = SessionConn(item.sock, item.address, item.ip)
        if self._whole_request(conn, first):
            return
        # Only part of the request is here: read it as it comes (consuming it, so a client that
        # trickles never makes the poller spin on bytes left in the kernel).
        self._incoming.schedule(conn, self.loop.time() + self.options.config.message_timeout)
        self.loop.add_reader(conn.fd, self._on_readable, conn)  # replaces the peek in place
        self._on_readable(conn)

    def _whole_request(self, conn: SessionConn, peeked: bytes) -> bool:
        """Handle a request that ``peeked`` holds entirely; False if more must be read first."""
        if len(peeked) < xdr.HEADER_SIZE:
            return False
        try:
            msg_type, length = xdr.parse_header(peeked[:xdr.HEADER_SIZE])
        except xdr.XdrError as exc:
            self.drop(conn, f"malformed request: {exc}")
            return True
        total = xdr.HEADER_SIZE + length
        if len(peeked) < total:
            return False
        try:
            # Exactly the request, which is in the kernel already: later bytes belong to the partner.
            conn.sock.recv(total)
            msg = xdr.decode_body(msg_type, peeked[xdr.HEADER_SIZE:total])
        except OSError as exc:
            self.drop(conn, f"failed before joining: {exc.strerror or exc}")
            return True
        except xdr.XdrError as exc:
            self.drop(conn, f"malformed request: {exc}")
            return True
        self._request(conn, msg)
        return True

    def _on_readable(self, conn: SessionConn) -> None:
        if conn.watching:
            self._watch(conn)
            return
        decoder_want = xdr.HEADER_SIZE - len(conn.buf)
        if decoder_want <= 0:
            try:
                _, length = xdr.parse_header(bytes(conn.buf[:xdr.HEADER_SIZE]))
            except xdr.XdrError as exc:
                self.drop(conn, f"malformed request: {exc}")
                return
            decoder_want = xdr.HEADER_SIZE + length - len(conn.buf)
        try:
            # Never more than the request: later bytes belong to the partner.
            data = conn.sock.recv(decoder_want) if decoder_want > 0 else b""
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.drop(conn, f"failed before joining: {exc.strerror or exc}")
            return
        if decoder_want > 0 and not data:
            self.drop(conn, None)
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
            self.drop(conn, f"malformed request: {exc}")
            return
        conn.buf = bytearray()
        self._request(conn, msg)

    def _request(self, conn: SessionConn, msg: xdr.Message) -> None:
        if not isinstance(msg, xdr.JoinSessionRequest):
            self.drop(conn, "unexpected message", xdr.RESPONSE_UNEXPECTED_MESSAGE)
            return
        self._join_session(conn, msg.key)

    # ------------------------------------------------------------ joining and pairing
    def _join_session(self, conn: SessionConn, key: bytes) -> None:
        result = self.table.join(key, conn)
        if isinstance(result, NotFound):
            self.drop(conn, "unknown session key", xdr.RESPONSE_NOT_FOUND)
            return
        if isinstance(result, AlreadyConnected):
            self.drop(conn, "session side already connected", xdr.RESPONSE_ALREADY_CONNECTED)
            return
        conn.key = key
        if not self._send_small(conn, _SUCCESS):
            if isinstance(result, Waiting):
                self.table.leave(key, conn)
            else:
                # Paired: the partner is ours to close too; the session cannot start.
                self.table.end(result.session)
                self.close_waiting(result.session, "partner failed")
            self.drop(conn, "could not answer the join")
            return
        self._incoming.cancel(conn)
        if isinstance(result, Waiting):
            # Waiting for the partner: watch only for the device giving up (MSG_PEEK), so early
            # bytes stay in the kernel for the partner. (Replaces the accept-time callback in place.)
            conn.watching = True
            self.loop.add_reader(conn.fd, self._on_readable, conn)
            return
        assert isinstance(result, Paired)
        self._start_session(result)

    def _send_small(self, conn: SessionConn, data: bytes) -> bool:
        try:
            return conn.sock.send(data) == len(data)
        except OSError:
            return False

    def _watch(self, conn: SessionConn) -> None:
        try:
            data = conn.sock.recv(1, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            if conn.key is not None:
                self.table.leave(conn.key, conn)
            self.drop(conn, "left while waiting for its partner")
            return
        # Early bytes for the partner: leave them in the kernel, stop watching.
        conn.watching = False
        self.loop.remove_reader(conn.fd)

    # ------------------------------------------------------------ forwarded sessions
    def _start_session(self, paired: Paired[SessionConn]) -> None:
        s = paired.session
        for c in (paired.server, paired.client):
            c.watching = False
        try:
            # Our readers stay registered: the engine takes them off the loop when it starts.
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
            self.throttles[s] = SessionThrottle(self.loop, fwd, buckets)
        if log.isEnabledFor(logging.DEBUG):
            log.debug("Session %s <-> %s started (%s, %s); %d active", format_device_id(s.server_id),
                      format_device_id(s.client_id), paired.server.address, paired.client.address,
                      self.table.active)

    def _session_closed(self, fwd: ForwardSession, reason: str) -> None:
        s = fwd.context
        assert isinstance(s, Session)
        throttle = self.throttles.pop(s, None)
        if throttle is not None:
            throttle.cancel()
        self.bytes_closed_sessions += fwd.counters.total
        for c in s.conns:
            if c is not None:
                self.admission.release(c.ip)
        self.table.end(s)
        log.debug("Session ended (%s) after %d bytes", reason, fwd.counters.total)

    def end_session(self, s: Session[SessionConn], reason: str) -> None:
        fwd = s.forward
        if isinstance(fwd, ForwardSession):
            fwd.close(reason)  # _session_closed follows
            return
        self.table.end(s)
        self.close_waiting(s, reason)

    def close_waiting(self, s: Session[SessionConn], reason: str) -> None:
        for i, c in enumerate(s.conns):
            if c is not None:
                s.conns[i] = None
                self.drop(c, reason)

    # ------------------------------------------------------------ the end of a plain connection
    def drop(self, item: Peeking | SessionConn, reason: str | None, last: xdr.Message | None = None) -> None:
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
