"""One protocol-mode (TLS) connection of the relay: OpenSSL on a non-blocking socket, on the loop's poller.

The connection only moves bytes: it completes the TLS handshake, decodes messages
(:class:`~natrelay.syncthing.xdr.Decoder`), hands them to the relay's
:class:`~natrelay.syncthing.relay.ProtocolRelay` and writes what it is told to.

Why not asyncio's SSL transport: a pairing opens a fresh TLS connection (the requesting device's
ConnectRequest) that lives for one message each way, and the transport's machinery costs more than
that: a Task and a future per connection for ``connect_accepted_socket``, memory BIOs copying every
record through Python objects, a 256 KiB read buffer and a handshake timer per connection (uvloop),
and the poller registration dropped and made again between the first-byte peek and the transport.
Here OpenSSL reads and writes the socket itself, one reader callback stays registered from accept
to close, the handshake deadline is a slot in the relay's timer wheel, and nothing is allocated per
message but the message (with the session-mode changes of the same commit: relay CPU per pairing
-10 to -13 %). The messages are a few dozen bytes, so a write almost always completes at once; what
does not is kept (bounded) and written when the socket is writable.

The TLS object is the ssl module's own C object (what ``ssl.SSLSocket`` keeps as ``_sslobj``), made by
``SSLContext._wrap_socket`` on the accepted socket: ``SSLSocket`` adds a second socket object over
the same descriptor (three system calls to check it: getsockopt, getsockname, getpeername) and a
Python layer around every call, down to an ioctl() per ``do_handshake`` to save and restore the
timeout; ~20 us per pairing together. Same OpenSSL calls, same exceptions (``SSLWantReadError``...).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from natrelay.syncthing import xdr
from natrelay.syncthing.deviceid import device_id_of, format_device_id

if TYPE_CHECKING:
    from natrelay.syncthing.server import SyncthingRelay

log = logging.getLogger("natrelay.syncthing")

#: A protocol connection whose peer does not read its few small messages is dropped past this.
MAX_WRITE_BUFFER = 64 * 1024
#: Plaintext taken from OpenSSL per read call; messages are small, a larger one arrives in pieces.
READ_SIZE = 16 * 1024

_HANDSHAKE, _OPEN, _CLOSED = 0, 1, 2


class TLSObject(Protocol):
    """What the relay uses of ``_ssl._SSLSocket`` (not in typeshed)."""

    def do_handshake(self) -> None: ...
    def read(self, size: int, /) -> bytes: ...
    def write(self, data: bytes | bytearray, /) -> int: ...
    def pending(self) -> int: ...
    def shutdown(self) -> object: ...
    def getpeercert(self, binary_form: bool = ..., /) -> Any: ...


class _ClosedTLS:
    """The TLS object of a closed connection. ``ssl.SSLSocket.close()`` freed OpenSSL's state at once;
    so does putting this in its place, whatever still holds the connection for a while (a cancelled
    entry of a timer wheel stays in its heap until it surfaces). Nothing calls it: every path checks
    the connection's state first."""

    def _closed(self) -> OSError:
        return OSError(errno.EBADF, "the TLS connection is closed")

    def do_handshake(self) -> None:
        raise self._closed()

    def read(self, size: int, /) -> bytes:
        raise self._closed()

    def write(self, data: bytes | bytearray, /) -> int:
        raise self._closed()

    def pending(self) -> int:
        return 0

    def shutdown(self) -> object:
        raise self._closed()

    def getpeercert(self, binary_form: bool = False, /) -> Any:
        return None


_CLOSED_TLS: TLSObject = _ClosedTLS()


def server_tls(ctx: ssl.SSLContext, sock: socket.socket) -> TLSObject:
    """The server side of TLS on the connected, non-blocking ``sock`` (which the caller keeps open)."""
    wrap: Callable[[socket.socket, bool, str | None], TLSObject] = ctx._wrap_socket  # type: ignore[attr-defined]
    return wrap(sock, True, None)


class ProtocolConn:
    """One TLS protocol-mode connection; created at the first byte, owns ``sock`` from then on."""

    __slots__ = ("_closing", "_out", "_state", "_writing", "address", "decoder", "device_id", "fd", "ip",
                 "opened", "server", "sock", "tls")

    def __init__(self, server: SyncthingRelay, sock: socket.socket, tls: TLSObject, address: str,
                 ip: str) -> None:
        self.server = server
        self.sock = sock
        self.tls = tls
        self.fd = sock.fileno()
        self.address = address
        self.ip = ip
        self.decoder = xdr.Decoder()
        self.device_id = b""
        self.opened = False
        self._state = _HANDSHAKE
        self._out = bytearray()
        self._writing = False
        self._closing = False

    # ------------------------------------------------------------ poller callbacks
    def on_readable(self) -> None:
        if self._state == _HANDSHAKE:
            self._handshake()
        elif self._state == _OPEN:
            self._read()

    def _on_writable(self) -> None:
        if self._state == _HANDSHAKE:
            self._handshake()
            return
        if self._state != _OPEN:
            return
        self._flush()
        if not self._out:
            self._stop_writing()
            if self._closing:
                self._finish()

    # ------------------------------------------------------------ handshake
    def _handshake(self) -> None:
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            self._stop_writing()
            return
        except ssl.SSLWantWriteError:
            self._start_writing()
            return
        except (ssl.SSLError, OSError) as exc:
            log.info("TLS handshake with %s failed: %s", self.address, exc or type(exc).__name__)
            self._lost()
            return
        self._stop_writing()
        self._state = _OPEN
        server = self.server
        server._handshake_done(self)
        cert = self.tls.getpeercert(True)
        if not cert:
            log.info("Protocol connection from %s without a client certificate: closed", self.address)
            self._lost()
            return
        self.device_id = device_id_of(cert)
        self.opened = True
        server.relay.opened(self, self.device_id, server.loop.time())
        server._rearm()
        if self.tls.pending():
            self._read()  # a message that came with the handshake's last flight

    def handshake_expired(self) -> None:
        """The relay's timer: no finished handshake within the message timeout."""
        if self._state == _HANDSHAKE:
            log.info("TLS handshake with %s: no answer within %g s", self.address,
                     self.server.options.config.message_timeout)
            self._lost()

    # ------------------------------------------------------------ messages
    def _read(self) -> None:
        tls = self.tls
        while True:
            try:
                data = tls.read(READ_SIZE)
            except (ssl.SSLWantReadError, BlockingIOError, InterruptedError):
                return
            except ssl.SSLWantWriteError:
                self._start_writing()  # a renegotiation-like write inside a read; rare
                return
            except (ssl.SSLError, OSError):
                self._lost()
                return
            if not data:
                self._lost()
                return
            try:
                messages = self.decoder.feed(data)
            except xdr.XdrError as exc:
                log.info("%s (%s): malformed message: %s", self.address, self._name(), exc)
                self._lost()
                return
            server = self.server
            for msg in messages:
                server._execute(server.relay.received(self, msg, server.loop.time()))
                if self._state != _OPEN:
                    return
            server._rearm()
            if not tls.pending():
                return  # more in the kernel wakes the poller again

    def send(self, msg: xdr.Message) -> None:
        if self._state != _OPEN or self._closing:
            return
        data = xdr.encode(msg)
        if self._out:
            self._out += data
            if len(self._out) > MAX_WRITE_BUFFER:
                log.info("%s (%s) does not read: closed", self.address, self._name())
                self._lost()
            return
        try:
            sent = self.tls.write(data)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            sent = 0
        except (ssl.SSLError, OSError):
            self._lost()
            return
        if sent < len(data):
            # OpenSSL wants the same bytes again (and may get more after them): keep them all.
            self._out += data
            self._start_writing()

    def _flush(self) -> None:
        try:
            sent = self.tls.write(self._out)
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError, InterruptedError):
            return
        except (ssl.SSLError, OSError):
            self._lost()
            return
        del self._out[:sent]

    # ------------------------------------------------------------ closing
    def close(self) -> None:
        """Close after what was sent is written (the relay's ``Close``)."""
        if self._state == _CLOSED:
            return
        if self._out and self._state == _OPEN:
            self._closing = True
            return
        self._finish()

    def _abort(self) -> None:
        self._lost()

    def _finish(self) -> None:
        if self._state == _OPEN:
            # close_notify, as Go's Close() sends; the peer's own is not waited for.
            with contextlib.suppress(ssl.SSLError, OSError, ValueError):
                self.tls.shutdown()
        self._lost()

    def _lost(self) -> None:
        """The end, whatever the cause: unregister, close, tell the relay exactly once."""
        if self._state == _CLOSED:
            return
        was_open = self._state == _OPEN
        was_handshaking = self._state == _HANDSHAKE
        self._state = _CLOSED
        server = self.server
        loop = server.loop
        with contextlib.suppress(Exception):
            loop.remove_reader(self.fd)
        self._stop_writing()
        self.tls = _CLOSED_TLS
        self.sock.close()
        if was_handshaking:
            server._handshake_done(self)
        server._connection_gone(self)
        if was_open and self.opened:
            self.opened = False
            server._execute(server.relay.closed(self))
            server._rearm()

    # ------------------------------------------------------------ helpers
    def _start_writing(self) -> None:
        if not self._writing:
            self._writing = True
            self.server.loop.add_writer(self.fd, self._on_writable)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            with contextlib.suppress(Exception):
                self.server.loop.remove_writer(self.fd)

    def _name(self) -> str:
        return format_device_id(self.device_id) if self.device_id else "no certificate"
