"""stdin/stdout as asyncio streams for netcat-style peers, whatever descriptors the process was given.

A peer may be started from a terminal, a pipe, a FIFO, a socket (inetd, systemd), with a regular
file redirected in or out, with ``/dev/null``, or with a descriptor closed. Whether the event loop
can watch a descriptor is decided by *trying*: registering it with a throw-away selector of the
same kind the loops use (epoll on Linux). epoll refuses regular files and some character devices
such as ``/dev/null`` with EPERM; asyncio then raises, but uvloop aborts the whole process, so the
probe must come before the loop sees the descriptor. What the loop cannot watch is read or
written by a daemon thread with the same flow control, so a redirect of any size holds a bounded
amount of memory and a blocked thread never keeps the process from exiting.

Closed descriptors: :func:`reserve_standard_fds` puts ``/dev/null`` on 0, 1 and 2 if they are
closed, so that no socket opened later can take those numbers (and receive data meant for the
terminal). A closed stdin then reads as empty input; a closed stdout is reopened read-only, so
:func:`check_stdout` can refuse it up front with a clear message.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import os
import select
import selectors
import socket
import stat
import sys
import threading
from collections import deque
from typing import Any

#: Bytes per read from stdin.
CHUNK = 256 * 1024
#: A thread-written stdout pauses its writer above this many queued bytes, resumes below LOW.
HIGH_WATER = 4 * CHUNK
LOW_WATER = CHUNK


class StdioError(OSError):
    """Standard input or output cannot be used; the message says which and why, on one line."""


# ----------------------------------------------------------------- descriptors
def reserve_standard_fds() -> None:
    """Open ``/dev/null`` on any of the descriptors 0, 1, 2 that is closed.

    Called first thing by the command line. Without it the first socket the program opens
    would become "stdin" or "stdout". stdout is reopened read-only so that writing to it
    fails (:func:`check_stdout`), as it would have; stdin and stderr become empty input and
    a sink. Python's own ``sys.std*`` objects are recreated for descriptors that were closed at
    start-up, so a message meant for stderr can never land on stdout.
    """
    for fd, flags in ((0, os.O_RDONLY), (1, os.O_RDONLY), (2, os.O_WRONLY)):
        try:
            os.fstat(fd)
            continue
        except OSError:
            pass
        new = os.open(os.devnull, flags)
        if new != fd:
            os.dup2(new, fd)
            os.close(new)
    with contextlib.suppress(OSError):
        if sys.stdin is None:
            sys.stdin = open(0, closefd=False)  # noqa: SIM115 - lives as long as the process
        if sys.stderr is None:
            sys.stderr = open(2, "w", closefd=False)  # noqa: SIM115


def check_stdout() -> None:
    """Raise :class:`StdioError` if standard output cannot be written (closed at start)."""
    try:
        mode = fcntl.fcntl(1, fcntl.F_GETFL) & os.O_ACCMODE
    except OSError as exc:
        raise StdioError(exc.errno, "standard output is closed") from exc
    if mode == os.O_RDONLY:
        raise StdioError(errno.EBADF, "standard output is closed (or not open for writing)")


def loop_can_watch(fd: int) -> bool:
    """Whether an event loop can watch ``fd``: try to register it with a fresh selector."""
    with selectors.DefaultSelector() as probe:
        try:
            probe.register(fd, selectors.EVENT_READ)
        except PermissionError:
            return False
        except OSError as exc:
            if exc.errno == errno.EPERM:
                return False
            raise
    return True


def _is_socket(fd: int) -> bool:
    """Sockets get a socket transport (for half-close); whether the loop can watch is asked apart."""
    return stat.S_ISSOCK(os.fstat(fd).st_mode)


def _wait_writable(fd: int) -> None:
    """For a thread writing to a descriptor someone else made non-blocking."""
    select.select([], [fd], [])


def _wait_readable(fd: int) -> None:
    select.select([fd], [], [])


# ------------------------------------------------------------ thread transports
class _ThreadReadTransport(asyncio.ReadTransport):
    """Reads ``fd`` in a daemon thread into a StreamReader, honouring the reader's pause/resume."""

    def __init__(self, reader: asyncio.StreamReader, fd: int) -> None:
        super().__init__()
        self._reader = reader
        self._fd = fd
        self._loop = asyncio.get_running_loop()
        self._resumed = threading.Event()
        self._resumed.set()
        self._delivered = threading.Event()
        self._closing = False
        reader.set_transport(self)
        threading.Thread(target=self._run, name="natrelay-stdin", daemon=True).start()

    def _run(self) -> None:
        try:
            while True:
                self._resumed.wait()
                if self._closing:
                    return
                try:
                    data = os.read(self._fd, CHUNK)
                except BlockingIOError:
                    _wait_readable(self._fd)
                    continue
                if self._closing:
                    return
                if not data:
                    self._call(self._reader.feed_eof)
                    return
                # Wait until the loop has taken the chunk (and perhaps paused us) before reading
                # on: otherwise the thread would read far ahead of what the reader has seen.
                self._delivered.clear()
                self._call(self._deliver, data)
                self._delivered.wait()
        except OSError as exc:
            self._call(self._reader.set_exception,
                       StdioError(exc.errno, f"cannot read standard input: {exc.strerror or exc}"))
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the program is ending
            self._loop.call_soon_threadsafe(fn, *args)

    def _deliver(self, data: bytes) -> None:
        try:
            if not self._closing:
                self._reader.feed_data(data)
        finally:
            self._delivered.set()

    def pause_reading(self) -> None:
        self._resumed.clear()

    def resume_reading(self) -> None:
        self._resumed.set()

    def is_reading(self) -> bool:
        return self._resumed.is_set()

    def close(self) -> None:
        self._closing = True
        self._resumed.set()
        self._delivered.set()

    def is_closing(self) -> bool:
        return self._closing


class _ThreadWriteTransport(asyncio.WriteTransport):
    """Writes to ``fd`` from a daemon thread, in order, with the writer's flow control.

    ``connection_lost`` is called once every queued byte is written (``close``/``write_eof``),
    or with the error that stopped the writing; ``StreamWriter.drain`` and ``wait_closed`` then
    report it, so a full disk or a closed pipe is never silent.
    """

    def __init__(self, fd: int, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._fd = fd
        self._protocol = protocol
        self._loop = asyncio.get_running_loop()
        self._queue: deque[bytes | None] = deque()
        self._cond = threading.Condition()
        self._buffered = 0
        self._paused = False
        self._closing = False
        self._failed = False
        threading.Thread(target=self._run, name="natrelay-stdout", daemon=True).start()

    def _run(self) -> None:
        error: OSError | None = None
        try:
            while True:
                with self._cond:
                    while not self._queue:
                        self._cond.wait()
                    data = self._queue.popleft()
                if data is None:
                    break
                self._write_all(data)
                self._call(self._written, len(data))
        except OSError as exc:
            error = StdioError(exc.errno, f"cannot write to standard output: {exc.strerror or exc}")
        finally:
            with contextlib.suppress(OSError):
                os.close(self._fd)
        self._call(self._finished, error)

    def _write_all(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                n = os.write(self._fd, view)
            except BlockingIOError:
                _wait_writable(self._fd)
                continue
            view = view[n:]

    def _call(self, fn: Any, *args: Any) -> None:
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(fn, *args)

    def _written(self, n: int) -> None:
        self._buffered -= n
        if self._paused and self._buffered <= LOW_WATER:
            self._paused = False
            self._protocol.resume_writing()

    def _finished(self, error: OSError | None) -> None:
        self._failed = error is not None
        self._closing = True
        self._protocol.connection_lost(error)

    def _put(self, item: bytes | None) -> None:
        with self._cond:
            self._queue.append(item)
            self._cond.notify()

    def write(self, data: Any) -> None:
        if self._closing or not data:
            return
        chunk = bytes(data)
        self._buffered += len(chunk)
        self._put(chunk)
        if not self._paused and self._buffered > HIGH_WATER:
            self._paused = True
            self._protocol.pause_writing()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        if not self._closing:
            self._closing = True
            if isinstance(self._protocol, _StdoutProtocol):
                self._protocol.close_requested = True
            self._put(None)

    def abort(self) -> None:
        self.close()

    def is_closing(self) -> bool:
        return self._closing

    def get_write_buffer_size(self) -> int:
        return self._buffered


class _EofClosesTransport(asyncio.WriteTransport):
    """A pipe or terminal has no half-close: end of stream on stdout means closing it."""

    def __init__(self, inner: asyncio.WriteTransport, protocol: _StdoutProtocol) -> None:
        super().__init__()
        self._inner = inner
        self._protocol = protocol

    def write(self, data: Any) -> None:
        self._inner.write(data)

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.close()

    def close(self) -> None:
        self._protocol.close_requested = True
        self._inner.close()

    def is_closing(self) -> bool:
        return self._inner.is_closing()

    def abort(self) -> None:
        self._inner.abort()

    def get_write_buffer_size(self) -> int:
        return self._inner.get_write_buffer_size()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._inner.get_extra_info(name, default)


class _StdoutProtocol(asyncio.streams.FlowControlMixin, asyncio.Protocol):
    """Flow control for the stdout writer, and the future ``wait_closed`` waits on."""

    def __init__(self) -> None:
        super().__init__()
        self._closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._error: StdioError | None = None
        #: Set when we close stdout: a close we did not ask for means the reader has gone
        #: (uvloop reports a pipe whose reader left before our first write as a clean close).
        self.close_requested = False

    def data_received(self, data: bytes) -> None:
        """A socket on stdout is written only; its reading is paused as soon as it opens."""

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is None and not self.close_requested:
            exc = StdioError(errno.EPIPE, "cannot write to standard output: its reader has gone")
        if exc is not None:
            self._error = exc if isinstance(exc, StdioError) else StdioError(
                getattr(exc, "errno", None) or errno.EIO,
                f"cannot write to standard output: {getattr(exc, 'strerror', None) or exc}")
        super().connection_lost(self._error)
        if not self._closed.done():
            if self._error is None:
                self._closed.set_result(None)
            else:
                self._closed.set_exception(self._error)
                self._closed.exception()  # retrieved here, so an unawaited failure is not logged

    async def _drain_helper(self) -> None:
        """``drain`` raises the real error (a full disk, a reader that left), not "Connection lost"."""
        if self._error is not None:
            raise self._error
        try:
            await super()._drain_helper()  # type: ignore[misc]  # not in typeshed
        except ConnectionResetError:
            if self._error is not None:
                raise self._error from None
            raise

    def _get_close_waiter(self, stream: asyncio.StreamWriter) -> asyncio.Future[None]:
        return self._closed


# --------------------------------------------------------------------- streams
class StdStreams:
    """stdin as a StreamReader and stdout as a StreamWriter, opened on duplicates of 0 and 1.

    The loop makes the descriptors it watches non-blocking, and a terminal or pipe shares that
    flag with the shell and the other programs on it; :meth:`close` puts back what was there.
    """

    def __init__(self, reader: asyncio.StreamReader, input_transport: asyncio.ReadTransport,
                 writer: asyncio.StreamWriter, output_protocol: _StdoutProtocol,
                 blocking: dict[int, bool]) -> None:
        self.reader = reader
        self.writer = writer
        self._input = input_transport
        self._output = output_protocol
        self._blocking = blocking

    @classmethod
    async def open(cls, *, stdin_fd: int = 0, stdout_fd: int = 1) -> StdStreams:
        blocking = {fd: os.get_blocking(fd) for fd in (stdin_fd, stdout_fd)}
        reader, transport = await _open_reader(stdin_fd)
        writer, protocol = await _open_writer(stdout_fd)
        return cls(reader, transport, writer, protocol, blocking)

    def close_input(self) -> None:
        """Stop reading stdin (what was not read yet stays there for whoever reads next)."""
        self._input.close()

    async def finish_output(self, timeout: float | None = None) -> None:
        """End stdout and wait until every byte written is flushed; raises what went wrong."""
        self._output.close_requested = True
        if not self.writer.is_closing():
            self.writer.close()
        await asyncio.wait_for(self.writer.wait_closed(), timeout)

    def close(self) -> None:
        """Release both ends and restore the descriptors' blocking mode."""
        self.close_input()
        if not self.writer.is_closing():
            self.writer.transport.abort()
        for fd, was_blocking in self._blocking.items():
            with contextlib.suppress(OSError):
                os.set_blocking(fd, was_blocking)


async def _open_reader(fd: int) -> tuple[asyncio.StreamReader, asyncio.ReadTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=CHUNK * 4, loop=loop)
    if loop_can_watch(fd):
        pipe = os.fdopen(os.dup(fd), "rb", buffering=0)
        try:
            transport, _ = await loop.connect_read_pipe(
                lambda: asyncio.StreamReaderProtocol(reader, loop=loop), pipe)
            return reader, transport
        except ValueError:  # watchable, but not a kind the loop's pipe transport takes
            pipe.close()
    return reader, _ThreadReadTransport(reader, os.dup(fd))


async def _open_writer(fd: int) -> tuple[asyncio.StreamWriter, _StdoutProtocol]:
    loop = asyncio.get_running_loop()
    protocol = _StdoutProtocol()
    transport: asyncio.WriteTransport
    watchable = loop_can_watch(fd)
    if watchable and _is_socket(fd):
        # A socket gets a real socket transport: it half-closes properly (shutdown), and unlike
        # a write-pipe transport it does not treat incoming data as the reader having left.
        sock = socket.socket(fileno=os.dup(fd))
        transport, _ = await loop.create_connection(lambda: protocol, sock=sock)
        transport.pause_reading()
    elif watchable:
        pipe = os.fdopen(os.dup(fd), "wb", buffering=0)
        try:
            inner, _ = await loop.connect_write_pipe(lambda: protocol, pipe)
            transport = _EofClosesTransport(inner, protocol)
        except ValueError:
            pipe.close()
            transport = _ThreadWriteTransport(os.dup(fd), protocol)
    else:
        transport = _ThreadWriteTransport(os.dup(fd), protocol)
    return asyncio.StreamWriter(transport, protocol, None, loop), protocol
