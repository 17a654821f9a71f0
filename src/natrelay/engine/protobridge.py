"""``streams.bridge`` at protocol level: the two transports forward to each other directly.

Why this exists: the general join is two ``Pump`` tasks, each ``await reader.read()``,
``writer.write()``, ``await writer.drain()`` through StreamReader/StreamWriter. Every chunk then
costs a task wake-up, futures, a copy into and out of the reader's buffer and a drain per
direction: ~42 us of CPU per 64-byte round trip per bridge under uvloop, against a few us for
a protocol that writes to the other transport from ``data_received``; an Offset round trip
crosses two bridges. Here each transport gets a protocol of ours (``set_protocol``) once the
bytes its reader had already buffered are passed on, and:

* ``data_received`` writes to the other transport and counts;
* ``pause_writing``/``resume_writing`` (this transport's write buffer over its high-water mark
  and back under the low one) pause and resume *reading the other transport*: memory stays
  bounded by the marks plus one read, as with ``drain()``;
* ``eof_received`` becomes ``write_eof`` on the other side and keeps the transport half-open,
  the other direction flowing on, unless the socket shows it was a reset (:mod:`tcpstate`);
* ``connection_lost(exc)`` with an error fails the join (``bridge`` then aborts both sides);
  a clean loss reads as end of input, and any later write into that transport fails, as a
  drain on a lost connection does.

The saved StreamReaderProtocol of each transport still gets ``connection_lost`` (its writer's
``wait_closed()`` and the tunnel's recorded loss reason depend on it).

Only transports known to support this are taken over: TCP and Unix socket transports of
asyncio's selector loop and of uvloop, and ``TunnelTransport``, each with the plain stream
protocol its ``open_connection``/``StreamWriter`` made. Anything else (pipes, SSL, other
protocols) returns ``None`` from :func:`join_streams` and ``bridge`` keeps its pumps.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, cast

from natrelay.engine.tcpstate import reset_behind_eof
from natrelay.engine.tunnel import TunnelStreamProtocol, TunnelTransport

#: Transport classes (module, name) whose ``set_protocol`` redirects every later callback.
_TAKEABLE = frozenset({
    ("asyncio.selector_events", "_SelectorSocketTransport"),
    ("uvloop.loop", "TCPTransport"),
    ("uvloop.loop", "UnixTransport"),
})
_PROTOCOLS = (asyncio.StreamReaderProtocol, TunnelStreamProtocol)

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class _End(asyncio.Protocol):
    """The protocol on one transport: what arrives goes to the other end's transport."""

    def __init__(self, join: JoinedStreams, transport: asyncio.Transport,
                 saved: asyncio.StreamReaderProtocol, output_paused: bool) -> None:
        self.join = join
        self.transport = transport
        self.saved = saved
        self.other: _End = self
        #: Bytes received here and written to the other transport.
        self.count = 0
        self.input_ended = False
        #: This transport's write buffer is over its high-water mark (we were told pause_writing).
        self.output_paused = output_paused
        self.lost = False

    def data_received(self, data: bytes) -> None:
        join = self.join
        if join.done:
            return
        other = self.other
        if other.lost:
            join.fail(ConnectionResetError("Connection lost"))  # what drain() raises there
            return
        try:
            other.transport.write(data)
        except Exception as exc:  # a failed write fails the join, whatever it is
            join.fail(exc)
            return
        self.count += len(data)

    def eof_received(self) -> bool:
        self.end_of_input()
        return True  # half-open: the other direction goes on

    def end_of_input(self) -> None:
        """The transport read its end: pass it on, unless the socket shows it was a reset."""
        if reset_behind_eof(self.transport, half_closed=self.other.input_ended):
            # A reset whose error a failed write already took (see tcpstate): not an end.
            self.join.fail(ConnectionResetError(errno.ECONNRESET, "Connection reset by peer"))
            return
        self.join.input_end(self)

    def pause_writing(self) -> None:
        self.output_paused = True
        source = self.other
        if not source.input_ended and not source.lost:
            source.transport.pause_reading()

    def resume_writing(self) -> None:
        self.output_paused = False
        self.join.read_if_wanted(self.other)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        join = self.join
        try:
            if not join.done:
                if exc is not None:
                    join.fail(exc)
                else:
                    # A reader fed EOF by a clean loss: end of input. Writes into it fail from
                    # now on, so the other side must not stay paused waiting for a drain.
                    self.output_paused = False
                    join.input_end(self)
                    join.read_if_wanted(self.other)
        finally:
            self.saved.connection_lost(exc)


class JoinedStreams:
    """Two transports forwarding to each other; :meth:`wait` returns the counts once both ended."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.future: asyncio.Future[None] = loop.create_future()
        self.done = False
        self.a: _End
        self.b: _End

    @property
    def counts(self) -> tuple[int, int]:
        """(a->b, b->a) bytes so far."""
        return self.a.count, self.b.count

    async def wait(self) -> tuple[int, int]:
        """Until both directions have ended; raises the first error of either."""
        await self.future
        return self.counts

    def stop(self) -> None:
        """Forward nothing more (the caller is aborting both sides)."""
        self.done = True

    def fail(self, exc: BaseException) -> None:
        if self.done:
            return
        self.done = True
        if not self.future.done():
            self.future.set_exception(exc)

    def input_end(self, end: _End) -> None:
        """``end`` will receive no more: half-close the other transport, as ``Pump`` does."""
        if end.input_ended or self.done:
            return
        end.input_ended = True
        other = end.other
        transport = other.transport
        if not other.lost and transport.can_write_eof() and not transport.is_closing():
            try:
                transport.write_eof()
            except Exception as exc:
                self.fail(exc)
                return
        if other.input_ended:
            self.done = True
            if not self.future.done():
                self.future.set_result(None)

    def read_if_wanted(self, source: _End) -> None:
        """Read ``source`` again unless its input ended or its destination is still full."""
        if self.done or source.input_ended or source.lost or source.other.output_paused:
            return
        transport = source.transport
        if not transport.is_reading():
            transport.resume_reading()

    def start(self, readers: tuple[asyncio.StreamReader, asyncio.StreamReader]) -> None:
        """Pass on what the readers hold (bytes, then an end of input), then set the reading."""
        for end, reader in zip((self.a, self.b), readers, strict=True):
            buffer = _buffer_of(reader)
            if buffer:
                data = bytes(buffer)
                buffer.clear()
                end.data_received(data)
        for end, reader in zip((self.a, self.b), readers, strict=True):
            if reader.at_eof():
                end.end_of_input()
        for end in (self.a, self.b):
            if self.done or end.input_ended:
                continue
            if end.other.output_paused:
                end.transport.pause_reading()
            else:
                self.read_if_wanted(end)


def _buffer_of(reader: asyncio.StreamReader) -> bytearray | None:
    """The bytes a StreamReader holds unread (its private buffer: there is no public peek)."""
    buffer = getattr(reader, "_buffer", None)
    return buffer if isinstance(buffer, bytearray) else None


def _saved_protocol(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
    """The stream protocol to take ``writer``'s transport from, or None if it cannot be."""
    transport = writer.transport
    kind = type(transport)
    if not isinstance(transport, TunnelTransport) and (kind.__module__, kind.__qualname__) not in _TAKEABLE:
        return None
    proto = getattr(writer, "_protocol", None)
    if type(proto) not in _PROTOCOLS or transport.get_protocol() is not proto:
        return None
    if type(reader) is not asyncio.StreamReader or getattr(proto, "_stream_reader", None) is not reader:
        return None
    if getattr(proto, "_over_ssl", True) or getattr(proto, "_connection_lost", True):
        return None
    if not isinstance(getattr(proto, "_paused", None), bool):
        return None
    if _buffer_of(reader) is None:
        return None
    if transport.is_closing() or reader.exception() is not None:
        return None
    if isinstance(transport, TunnelTransport) and transport.eof_sent:
        return None
    return proto


def join_streams(a: Streams, b: Streams) -> JoinedStreams | None:
    """Make the transports of ``a`` and ``b`` forward to each other, or None if one cannot be taken.

    ``a`` and ``b`` must each be the reader and writer of one connection, not in use elsewhere.
    """
    (ra, wa), (rb, wb) = a, b
    if wa.transport is wb.transport:
        return None
    pa, pb = _saved_protocol(ra, wa), _saved_protocol(rb, wb)
    if pa is None or pb is None:
        return None
    join = JoinedStreams(asyncio.get_running_loop())
    ta = cast(asyncio.Transport, wa.transport)  # a read-write transport: checked above
    tb = cast(asyncio.Transport, wb.transport)
    join.a = _End(join, ta, pa, pa._paused)
    join.b = _End(join, tb, pb, pb._paused)
    join.a.other, join.b.other = join.b, join.a
    ta.set_protocol(join.a)
    tb.set_protocol(join.b)
    join.start((ra, rb))
    return join
