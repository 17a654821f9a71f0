"""stdin/stdout as asyncio streams, for netcat-style peers.

Pipes, sockets and terminals are watched by the event loop directly; a regular file cannot be
(epoll refuses it, and uvloop aborts the process instead of raising), so for redirects from or
to files a worker thread does the blocking I/O. The choice is made by the descriptor's type.
"""

from __future__ import annotations

import asyncio
import os
import stat
import sys
from typing import Any

CHUNK = 256 * 1024


def _pollable(fd: int) -> bool:
    """Whether the event loop can watch ``fd`` (pipes, sockets, terminals; not regular files)."""
    mode = os.fstat(fd).st_mode
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode)


class _FileWriteTransport(asyncio.WriteTransport):
    """Blocking writes to a regular file descriptor, one at a time in a worker thread."""

    def __init__(self, fd: int, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._fd = fd
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing = False
        self._task = self._loop.create_task(self._run())

    async def _run(self) -> None:
        while True:
            data = await self._queue.get()
            if data is None:
                break
            await self._loop.run_in_executor(None, _write_all, self._fd, data)
        self._protocol.connection_lost(None)

    def write(self, data: Any) -> None:
        self._queue.put_nowait(bytes(data))

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            self._queue.put_nowait(None)

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._queue.qsize()


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


async def open_stdin() -> asyncio.StreamReader:
    """A reader for standard input."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK * 4, loop=loop)
    fd = sys.stdin.fileno()
    if _pollable(fd):
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop),
                                     os.fdopen(os.dup(fd), "rb", buffering=0))
    else:
        _FileReadTransport(reader, fd)
    return reader


class _FileReadTransport(asyncio.ReadTransport):
    """Blocking reads of a regular file in a worker thread, with the reader's flow control.

    The StreamReader pauses its transport when its buffer passes its limit; the feeding task
    waits for the resume, so a redirect from a file of any size holds a bounded amount.
    """

    def __init__(self, reader: asyncio.StreamReader, fd: int) -> None:
        super().__init__()
        self._reader = reader
        self._fd = fd
        self._resumed = asyncio.Event()
        self._resumed.set()
        self._closing = False
        reader.set_transport(self)
        self._task = asyncio.get_running_loop().create_task(self._feed())

    async def _feed(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._closing:
            await self._resumed.wait()
            data = await loop.run_in_executor(None, os.read, self._fd, CHUNK)
            if not data:
                self._reader.feed_eof()
                return
            self._reader.feed_data(data)

    def pause_reading(self) -> None:
        self._resumed.clear()

    def resume_reading(self) -> None:
        self._resumed.set()

    def is_reading(self) -> bool:
        return self._resumed.is_set()

    def close(self) -> None:
        self._closing = True
        self._resumed.set()

    def is_closing(self) -> bool:
        return self._closing


class _StdoutProtocol(asyncio.streams.FlowControlMixin, asyncio.Protocol):
    """Flow control for the stdout writer (so ``drain`` waits when the pipe is full)."""

    def __init__(self) -> None:
        super().__init__()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if not self._closed.done():
            self._closed.set_result(None)

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


async def open_stdout() -> asyncio.StreamWriter:
    """A writer for standard output; ``write_eof``/``close`` close it."""
    loop = asyncio.get_running_loop()
    fd = sys.stdout.fileno()
    protocol = _StdoutProtocol()
    transport: asyncio.WriteTransport
    if _pollable(fd):
        pipe, _ = await loop.connect_write_pipe(lambda: protocol, os.fdopen(os.dup(fd), "wb", buffering=0))
        transport = _EofClosesTransport(pipe)
    else:
        transport = _FileWriteTransport(os.dup(fd), protocol)
    return asyncio.StreamWriter(transport, protocol, None, loop)


class _EofClosesTransport(asyncio.WriteTransport):
    """A pipe has no half-close: end of stream on stdout means closing it."""

    def __init__(self, inner: asyncio.WriteTransport) -> None:
        super().__init__()
        self._inner = inner

    def write(self, data: Any) -> None:
        self._inner.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self._inner.close()

    def close(self) -> None:
        self._inner.close()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def abort(self) -> None:
        self._inner.abort()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)
