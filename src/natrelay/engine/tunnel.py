"""A byte stream with half-close over any ordered, encrypted message channel, as an asyncio transport.

Both families end in a message channel between the two peers (Offset: the end-to-end channel
inside a tunnel; Aspia: the host-client channel after SRP). natrelay carries byte streams there
in a layer of its own, so that a relayed connection behaves like a TCP connection to the
program using it, half-close included:

* ``00 ‖ bytes`` — stream data (at most ``MAX_CHUNK`` bytes per message);
* ``01``        — end of stream: the sender will send no more data (like TCP's FIN);
* ``02 ‖ text``  — abort: the sender gives up on the stream, for the UTF-8 reason given (like
  TCP's RST, but saying why: "the host cannot reach its service", "interrupted"). Without it an
  error on one side would look to the other like a clean end, and a truncated transfer like a
  complete one. A peer that predates it treats it as an unknown message and aborts all the same.

A tunnel ends when both sides have sent their end of stream; since every message is ordered
after the data before it, nothing in flight is lost on either side's close.

``TunnelTransport`` exposes a tunnel as an ``asyncio.Transport``, so callers use the ordinary
``StreamReader``/``StreamWriter`` (or any asyncio protocol) on it.
"""

from __future__ import annotations

import asyncio
from typing import Any, Protocol, cast


class StreamLayerError(Exception):
    """A message that is not valid in the stream layer: the channel must be closed."""


class MessageCarrier(Protocol):
    """What a ``TunnelTransport`` needs from the connection that carries its messages."""

    @property
    def transport(self) -> asyncio.Transport | None:
        """The socket transport under the channel (for flow control and addresses)."""

    @property
    def closing(self) -> bool:
        """Whether the carrying connection is closing or closed."""

    def send_app(self, messages: list[bytes]) -> None:
        """Send stream-layer messages, in order, through the encrypted channel."""

    def maybe_finish(self) -> None:
        """Close the channel if both sides have ended their streams."""

    def close(self, reason: str) -> None:
        """Close after queued output is written."""

    def abort(self, reason: str) -> None:
        """Drop the connection now."""

DATA = 0x00
END = 0x01
ABORT = 0x02
#: Longest abort reason sent or accepted, in bytes of UTF-8.
MAX_REASON = 512
#: Payload bytes per data message. Every layer below copies the message a few times; keeping
#: each copy under ~70 KB keeps them in the allocator's cheap range (measured: encoding a 64 KiB
#: Offset payload took 35 us, a 120 KB one 390 us, from heap trimming and fresh pages).
MAX_CHUNK = 60 * 1024

END_MESSAGE = bytes([END])


def encode_data(chunk: bytes | memoryview) -> bytes:
    """One data message (``chunk`` must be at most ``MAX_CHUNK`` bytes)."""
    return b"\x00" + chunk


class RemoteAbort(Exception):
    """The other side aborted the stream; ``str(exc)`` is its reason."""


def encode_abort(reason: str) -> bytes:
    """An abort message; the reason is cut to ``MAX_REASON`` bytes on a character boundary."""
    text = reason.encode("utf-8")[:MAX_REASON].decode("utf-8", "ignore")
    return bytes([ABORT]) + text.encode("utf-8")


def decode_message(message: bytes) -> bytes | None:
    """A data message's bytes, or ``None`` for end of stream.

    Raises :class:`RemoteAbort` for an abort message and ``StreamLayerError`` for anything invalid.
    """
    if not message:
        raise StreamLayerError("empty tunnel message")
    kind = message[0]
    if kind == DATA:
        if len(message) == 1:
            raise StreamLayerError("tunnel data message without data")
        return message[1:]
    if kind == END:
        if len(message) != 1:
            raise StreamLayerError("tunnel end-of-stream message with trailing bytes")
        return None
    if kind == ABORT:
        if len(message) > 1 + MAX_REASON:
            raise StreamLayerError("tunnel abort message with an oversized reason")
        reason = message[1:].decode("utf-8", "replace").strip()
        raise RemoteAbort("".join(c if c.isprintable() else "?" for c in reason) or "no reason given")
    raise StreamLayerError(f"unknown tunnel message type {kind}")


def split_data(data: bytes | bytearray | memoryview) -> list[bytes]:
    """Data messages for ``data``, in order."""
    view = memoryview(data)
    return [encode_data(view[i:i + MAX_CHUNK]) for i in range(0, len(view), MAX_CHUNK)]


class TunnelStreamProtocol(asyncio.StreamReaderProtocol):
    """The application protocol of a tunnel's ``StreamReader``/``StreamWriter`` pair.

    asyncio's ``drain()`` can raise a bare ``ConnectionResetError('Connection lost')`` once the
    transport is gone (it checks the reader's error first, but only when it saw it in time): a
    user would then read "Connection lost" where the carrier knew "the relay went away". This
    keeps the reason the tunnel was lost with and raises that instead.
    """

    lost: BaseException | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            self.lost = exc
        super().connection_lost(exc)

    async def _drain_helper(self) -> None:
        try:
            await super()._drain_helper()  # type: ignore[misc]
        except ConnectionResetError as exc:
            if self.lost is None or exc is self.lost:
                raise
            raise ConnectionResetError(str(self.lost)) from exc


class TunnelTransport(asyncio.Transport):
    """An end-to-end tunnel as an asyncio transport (stream semantics, half-close)."""

    def __init__(self, conn: MessageCarrier, extra: dict[str, Any], end: StreamEnd | None = None) -> None:
        super().__init__(extra)
        self._conn = conn
        self._end = end
        self._protocol: asyncio.BaseProtocol | None = None
        self.eof_sent = False
        self._closing = False

    # ---- BaseTransport
    def get_protocol(self) -> asyncio.BaseProtocol:
        assert self._protocol is not None
        return self._protocol

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        """Later stream events (data, end of stream, flow control, loss) go to ``protocol``."""
        self._protocol = protocol
        if self._end is not None:
            self._end.app = cast(asyncio.Protocol, protocol)

    def is_closing(self) -> bool:
        return self._closing or self._conn.closing

    def close(self) -> None:
        """End our side (sending end of stream if not yet sent) and close the tunnel."""
        if self._closing:
            return
        self._closing = True
        if not self.eof_sent:
            self.eof_sent = True
            self._conn.send_app([END_MESSAGE])
        self._conn.close("closed by the local side")

    # ---- ReadTransport
    def is_reading(self) -> bool:
        transport = self._conn.transport
        return transport is not None and transport.is_reading()

    def pause_reading(self) -> None:
        if self._conn.transport is not None and not self._conn.closing:
            self._conn.transport.pause_reading()

    def resume_reading(self) -> None:
        if self._conn.transport is not None and not self._conn.closing:
            self._conn.transport.resume_reading()

    # ---- WriteTransport
    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.eof_sent:
            raise RuntimeError("cannot write to a tunnel after write_eof() or close()")
        if data:
            self._conn.send_app(split_data(data))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def write_eof(self) -> None:
        if self.eof_sent:
            return
        self.eof_sent = True
        self._conn.send_app([END_MESSAGE])
        self._conn.maybe_finish()

    def can_write_eof(self) -> bool:
        return True

    def abort(self) -> None:
        self._closing = True
        self._conn.abort("aborted by the local side")

    def abort_with_reason(self, reason: str) -> None:
        """Give up on the stream and tell the other side why (instead of a clean end of stream).

        The abort message is queued after any data still unsent and the carrier closes once it
        is written, so the reason arrives; the other side's reader then fails with it.
        """
        if self._closing or self._conn.closing:
            self._closing = True
            return
        self._closing = True
        self.eof_sent = True
        self._conn.send_app([encode_abort(reason)])
        self._conn.close(f"aborted: {reason}")

    def get_write_buffer_size(self) -> int:
        transport = self._conn.transport
        return transport.get_write_buffer_size() if transport is not None else 0

    def get_write_buffer_limits(self) -> tuple[int, int]:
        transport = self._conn.transport
        return transport.get_write_buffer_limits() if transport is not None else (0, 0)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if self._conn.transport is not None:
            self._conn.transport.set_write_buffer_limits(high, low)


class StreamEnd:
    """The application's end of a carried byte stream: what a carrier does with stream messages.

    A carrier (an Offset tunnel connection, an Aspia relay channel) owns the socket and the
    encrypted channel; this owns the stream on top: the transport the application sees, the
    received end of stream, and when the stream as a whole is finished. One implementation, so
    half-close means the same thing in every family.
    """

    def __init__(self, app: asyncio.Protocol) -> None:
        #: Where stream events go: the transport's protocol (``set_protocol`` changes it).
        self.app = app
        self.transport: TunnelTransport | None = None
        self.remote_ended = False
        self.remote_abort: str | None = None

    def open(self, carrier: MessageCarrier, extra: dict[str, Any]) -> TunnelTransport:
        """The channel is authenticated: give the application its transport."""
        self.transport = TunnelTransport(carrier, extra, self)
        self.transport.set_protocol(self.app)
        self.app.connection_made(self.transport)
        return self.transport

    def deliver(self, message: bytes) -> str | None:
        """Hand one received stream message to the application; returns why to abort, if it must."""
        try:
            data = decode_message(message)
        except RemoteAbort as exc:
            self.remote_abort = str(exc)
            return f"the other side aborted: {exc}"
        except StreamLayerError as exc:
            return f"stream layer error: {exc}"
        if self.remote_ended:
            return "stream data after end of stream"
        if data is None:
            self.remote_ended = True
            self.app.eof_received()
        else:
            self.app.data_received(data)
        return None

    @property
    def finished(self) -> bool:
        """Both sides have ended their streams: the carrier can close once its output is written."""
        return self.remote_ended and self.transport is not None and self.transport.eof_sent

    def pause_writing(self) -> None:
        if self.transport is not None:
            self.app.pause_writing()

    def resume_writing(self) -> None:
        if self.transport is not None:
            self.app.resume_writing()

    def connection_lost(self, reason: str) -> None:
        """The carrier is gone; a stream whose peer had ended it lost nothing, otherwise it was reset."""
        if self.transport is None:
            return
        if self.remote_abort is not None:
            self.app.connection_lost(ConnectionResetError(
                f"the other side ended the connection: {self.remote_abort}"))
        else:
            self.app.connection_lost(None if self.remote_ended
                                     else ConnectionResetError(f"relayed connection closed: {reason}"))
