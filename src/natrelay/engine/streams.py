"""Joining two byte streams, with half-close carried across (the peers' port forwarding).

Used by every peer program: a local TCP connection or stdin/stdout on one side, a relayed
tunnel on the other. End of input on one side becomes ``write_eof`` on the other while the
opposite direction keeps flowing, as ssh and netcat users expect.
"""

from __future__ import annotations

import asyncio
import contextlib

CHUNK = 256 * 1024


async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    """Copy ``reader`` to ``writer`` until end of input, then half-close ``writer``.

    Returns the number of bytes copied. Errors propagate, so the caller can tear both down.
    """
    total = 0
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        writer.write(data)
        total += len(data)
        await writer.drain()
    if writer.can_write_eof() and not writer.is_closing():
        writer.write_eof()  # no drain after this: for a pipe, end of stream closes the transport
    return total


async def bridge(a: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 b: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> tuple[int, int]:
    """Forward both ways until both directions have ended; close both. Returns (a->b, b->a)."""
    (ra, wa), (rb, wb) = a, b
    t1 = asyncio.ensure_future(pump(ra, wb))
    t2 = asyncio.ensure_future(pump(rb, wa))
    try:
        done, _pending = await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            task.result()  # an error in one direction ends both
        return t1.result(), t2.result()
    finally:
        for task in (t1, t2):
            if not task.done():
                task.cancel()
        for task in (t1, t2):
            with contextlib.suppress(BaseException):
                await task
        for w in (wa, wb):
            w.close()
        for w in (wa, wb):
            with contextlib.suppress(Exception):
                await w.wait_closed()
