"""One protocol-mode (TLS) connection of the relay, carried by asyncio's SSL transport.

The connection only moves bytes: it decodes messages (:class:`~natrelay.syncthing.xdr.Decoder`), hands
them to the relay's :class:`~natrelay.syncthing.relay.ProtocolRelay` and writes what it is told to.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, cast

from natrelay.syncthing import xdr
from natrelay.syncthing.deviceid import device_id_of, format_device_id

if TYPE_CHECKING:
    from natrelay.syncthing.server import SyncthingRelay

log = logging.getLogger("natrelay.syncthing")

#: A protocol connection whose peer does not read its few small messages is dropped past this.
MAX_WRITE_BUFFER = 64 * 1024


class ProtocolConn(asyncio.Protocol):
    """One TLS protocol-mode connection, carried by asyncio's SSL transport."""

    def __init__(self, server: SyncthingRelay, address: str, ip: str) -> None:
        self.server = server
        self.address = address
        self.ip = ip
        self.transport: asyncio.Transport | None = None
        self.decoder = xdr.Decoder()
        self.device_id = b""
        self.opened = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's SSL transport is not an asyncio.Transport subclass but has its methods.
        transport = cast(asyncio.Transport, transport)
        self.transport = transport
        self.server._handshake_done()
        ssl_object = transport.get_extra_info("ssl_object")
        cert = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if not cert:
            log.info("Protocol connection from %s without a client certificate: closed", self.address)
            transport.abort()
            return
        self.device_id = device_id_of(cert)
        self.opened = True
        self.server.relay.opened(self, self.device_id, self.server.loop.time())
        self.server._rearm()

    def data_received(self, data: bytes) -> None:
        if not self.opened:
            return
        try:
            messages = self.decoder.feed(data)
        except xdr.XdrError as exc:
            log.info("%s (%s): malformed message: %s", self.address, self._name(), exc)
            self._abort()
            return
        server = self.server
        for msg in messages:
            server._execute(server.relay.received(self, msg, server.loop.time()))
        server._rearm()

    def eof_received(self) -> bool | None:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._connection_gone(self.ip)
        if self.opened:
            self.opened = False
            self.server._execute(self.server.relay.closed(self))
            self.server._rearm()

    def send(self, msg: xdr.Message) -> None:
        t = self.transport
        if t is None or t.is_closing():
            return
        t.write(xdr.encode(msg))
        if t.get_write_buffer_size() > MAX_WRITE_BUFFER:
            log.info("%s (%s) does not read: closed", self.address, self._name())
            t.abort()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _name(self) -> str:
        return format_device_id(self.device_id) if self.device_id else "no certificate"
