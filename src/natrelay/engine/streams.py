"""Joining two byte streams, with half-close carried across (the peers' port forwarding).

Used by every peer program: a local TCP connection or stdin/stdout on one side, a relayed
tunnel on the other. End of input on one side becomes ``write_eof`` on the other while the
opposite direction keeps flowing, as ssh and netcat users expect.

An *error* is never turned into an end of stream: if either direction fails (a reset, a broken
tunnel, a write that cannot be done) or the join is cancelled, both sides are aborted — a TCP
connection with a reset, a tunnel with an abort message saying why — so the programs at both
ends see a failure, not a shorter stream that looks complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
import struct

from natrelay.engine.protobridge import join_streams
from natrelay.engine.tcpstate import reset_behind_eof
from natrelay.engine.tunnel import TunnelTransport

CHUNK = 256 * 1024


class Pump:
    """Copies one direction and counts what it moved, readable at any time (progress, errors).

    ``waiting_for_input`` tells whether it is idle on its reader: the other side closing then
    cost nothing, while a pump caught between read and write was carrying bytes that are lost.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 source: asyncio.StreamWriter | None = None,
                 opposite: Pump | None = None) -> None:
        self.reader = reader
        self.writer = writer
        #: The writer of ``reader``'s connection and the pump that may half-close it: with both,
        #: an end of input that the socket shows was a reset fails (see :mod:`tcpstate`).
        self.source = source
        self.opposite = opposite
        self.count = 0
        self.waiting_for_input = False
        self.eof_written = False

    async def run(self) -> int:
        """Copy until end of input, then half-close the writer. Errors propagate."""
        reader, writer = self.reader, self.writer
        while True:
            self.waiting_for_input = True
            data = await reader.read(CHUNK)
            self.waiting_for_input = False
            if not data:
                source, opposite = self.source, self.opposite
                if source is not None and opposite is not None and reset_behind_eof(
                        source.transport, half_closed=opposite.eof_written):
                    raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
                break
            writer.write(data)
            await writer.drain()
            self.count += len(data)
        if writer.can_write_eof() and not writer.is_closing():
            self.eof_written = True
            writer.write_eof()  # no drain after this: for a pipe, end of stream closes the transport
        return self.count


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy ``reader`` to ``writer`` until end of input, then half-close ``writer``; returns the count."""
    return await Pump(reader, writer).run()


def abort_stream(writer: asyncio.StreamWriter, reason: str) -> None:
    """End a stream as failed: a tunnel learns ``reason``, anything else is reset."""
    transport = writer.transport
    if isinstance(transport, TunnelTransport):
        transport.abort_with_reason(reason)
        return
    sock = transport.get_extra_info("socket")
    if sock is not None and sock.type == socket.SOCK_STREAM:
        # Closing a socket sends FIN (a clean end) unless told to linger 0 s: then it is a reset.
        # uvloop's socket stand-in raises ValueError once the transport has lost its socket;
        # the abort below must still run, or the other side of a bridge is never reset.
        with contextlib.suppress(OSError, ValueError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    transport.abort()


def describe(exc: BaseException) -> str:
    """An exception as one line for a user ("connection reset", not a class name)."""
    if isinstance(exc, OSError) and exc.strerror:
        return f"{exc.strerror}: {exc.filename}" if exc.filename else exc.strerror
    return str(exc) or type(exc).__name__


async def bridge(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, int]:
    """Forward both ways until both directions have ended; close both. Returns (a->b, b->a).

    Socket and tunnel transports are joined at protocol level (:mod:`natrelay.engine.protobridge`,
    same semantics, a fraction of the CPU); anything else (pipes, SSL) gets two ``Pump`` tasks.

    If a direction fails, or the caller cancels, both writers are aborted (see the module
    docstring) and the error (or the cancellation) propagates.
    """
    (ra, wa), (rb, wb) = a, b
    joined = join_streams(a, b)  # protocol level where both transports allow it (protobridge)
    tasks: list[asyncio.Future[int]] = []
    ok = False
    try:
        if joined is not None:
            result = await joined.wait()
        else:
            forward, backward = Pump(ra, wb, source=wa), Pump(rb, wa, source=wb)
            forward.opposite, backward.opposite = backward, forward
            tasks = [asyncio.ensure_future(forward.run()), asyncio.ensure_future(backward.run())]
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()  # an error in one direction ends both
            result = tasks[0].result(), tasks[1].result()
        ok = True
        return result
    except BaseException as exc:
        if joined is not None:
            joined.stop()
        reason = "interrupted" if isinstance(exc, asyncio.CancelledError) else describe(exc)
        for w in (wa, wb):
            abort_stream(w, reason)
        raise
    finally:
        for task in tasks:
            if not task.done():
                task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        if ok:
            for w in (wa, wb):
                w.close()
        for w in (wa, wb):
            with contextlib.suppress(Exception):
                await w.wait_closed()
