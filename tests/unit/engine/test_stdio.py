"""stdin/stdout transports for every kind of descriptor a process can be given, on both event loops.

The descriptors are real (files, pipes, FIFOs, sockets, a pseudo-terminal, /dev/null, /dev/full);
what is faked is only which numbers play stdin and stdout (``StdStreams.open`` takes them), so
the test process's own 0 and 1 stay untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import pty
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import uvloop

from natrelay.engine.stdio import CHUNK, StdioError, StdStreams, loop_can_watch

LOOPS = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
DATA = os.urandom(3 * 1024 * 1024 + 17)


def run(loop_name: str, coro_fn: Callable[[], object]) -> object:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as runner:
        return runner.run(coro_fn())  # type: ignore[arg-type]


@contextlib.contextmanager
def source(kind: str, tmp_path: Path, data: bytes) -> Iterator[int]:
    """A readable descriptor of ``kind`` that yields ``data`` then end of input."""
    feeder: threading.Thread | None = None
    if kind == "file":
        path = tmp_path / "in"
        path.write_bytes(data)
        fd = os.open(path, os.O_RDONLY)
    elif kind == "devnull":
        assert not data
        fd = os.open(os.devnull, os.O_RDONLY)
    elif kind in ("pipe", "fifo", "socket", "pty"):
        if kind == "pipe":
            fd, wfd = os.pipe()
        elif kind == "fifo":
            path = tmp_path / "fifo"
            os.mkfifo(path)
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
            wfd = os.open(path, os.O_WRONLY)
            os.set_blocking(fd, True)
        elif kind == "socket":
            a, b = socket.socketpair()
            fd, wfd = a.detach(), b.detach()
        else:
            wfd, fd = pty.openpty()  # master writes, the slave is the "terminal" stdin
            import termios
            import tty
            tty.setraw(fd)
            attrs = termios.tcgetattr(fd)
            attrs[3] &= ~termios.ECHO
            termios.tcsetattr(fd, termios.TCSANOW, attrs)

        def feed() -> None:
            view = memoryview(data)
            while view:
                n = os.write(wfd, view[:4096] if kind == "pty" else view)
                view = view[n:]
            if kind == "pty":
                os.write(wfd, b"")  # a raw terminal has no end of file: the test reads a length
            else:
                os.close(wfd)

        feeder = threading.Thread(target=feed, daemon=True)
        feeder.start()
    else:
        raise AssertionError(kind)
    try:
        yield fd
    finally:
        if feeder is not None:
            feeder.join(5)
        with contextlib.suppress(OSError):
            os.close(fd)
        if kind == "pty":
            with contextlib.suppress(OSError):
                os.close(wfd)


READ_KINDS = ["file", "devnull", "pipe", "fifo", "socket", "pty"]


@pytest.mark.parametrize("loop_name", list(LOOPS))
@pytest.mark.parametrize("kind", READ_KINDS)
def test_stdin_of_every_kind_reads_every_byte(kind: str, loop_name: str, tmp_path: Path) -> None:
    data = b"" if kind == "devnull" else DATA if kind != "pty" else DATA[:200_000]
    out_r, out_w = os.pipe()

    async def main() -> bytes:
        with source(kind, tmp_path, data) as fd:
            std = await StdStreams.open(stdin_fd=fd, stdout_fd=out_w)
            try:
                got = bytearray()
                while len(got) < len(data) or kind != "pty":
                    chunk = await asyncio.wait_for(std.reader.read(CHUNK), 20)
                    if not chunk:
                        break
                    got += chunk
                    if kind == "pty" and len(got) >= len(data):
                        break
                return bytes(got)
            finally:
                std.close()

    try:
        got = run(loop_name, main)
    finally:
        os.close(out_r)
        os.close(out_w)
    assert isinstance(got, bytes)
    assert len(got) == len(data) and hashlib.sha256(got).digest() == hashlib.sha256(data).digest()


@contextlib.contextmanager
def sink(kind: str, tmp_path: Path) -> Iterator[tuple[int, Callable[[], bytes]]]:
    """A writable descriptor of ``kind`` and a function returning everything written to it."""
    collected = bytearray()
    reader: threading.Thread | None = None
    rfd = -1
    if kind == "file":
        path = tmp_path / "out"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        yield fd, path.read_bytes
        with contextlib.suppress(OSError):
            os.close(fd)
        return
    if kind == "devnull":
        fd = os.open(os.devnull, os.O_WRONLY)
        yield fd, bytes
        with contextlib.suppress(OSError):
            os.close(fd)
        return
    if kind == "pipe":
        rfd, fd = os.pipe()
    elif kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)
        rfd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        fd = os.open(path, os.O_WRONLY)
        os.set_blocking(rfd, True)
    elif kind == "socket":
        a, b = socket.socketpair()
        fd, rfd = a.detach(), b.detach()
    else:
        raise AssertionError(kind)

    def drain() -> None:
        while chunk := os.read(rfd, 1 << 20):
            collected.extend(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()

    def result() -> bytes:
        assert reader is not None
        reader.join(20)
        return bytes(collected)

    try:
        yield fd, result
    finally:
        with contextlib.suppress(OSError):
            os.close(fd)
        if reader is not None:
            reader.join(5)
        os.close(rfd)


WRITE_KINDS = ["file", "devnull", "pipe", "fifo", "socket"]


@pytest.mark.parametrize("loop_name", list(LOOPS))
@pytest.mark.parametrize("kind", WRITE_KINDS)
def test_stdout_of_every_kind_is_flushed_before_finish_returns(kind: str, loop_name: str,
                                                                 tmp_path: Path) -> None:
    in_fd = os.open(os.devnull, os.O_RDONLY)

    with sink(kind, tmp_path) as (fd, written):
        async def main() -> None:
            std = await StdStreams.open(stdin_fd=in_fd, stdout_fd=fd)
            try:
                for i in range(0, len(DATA), 100_000):
                    std.writer.write(DATA[i:i + 100_000])
                    await std.writer.drain()
                await std.finish_output(20)
            finally:
                std.close()

        run(loop_name, main)
        if kind != "socket":
            os.close(fd)  # our copy: the reader then sees end of file
        else:
            with contextlib.suppress(OSError):
                socket.socket(fileno=os.dup(fd)).shutdown(socket.SHUT_WR)
        got = written()
    os.close(in_fd)
    if kind == "devnull":
        assert got == b""
    else:
        assert hashlib.sha256(got).digest() == hashlib.sha256(DATA).digest()


@pytest.mark.parametrize("loop_name", list(LOOPS))
@pytest.mark.parametrize("target", ["full", "broken-pipe"])
def test_a_failing_stdout_is_reported_not_swallowed(target: str, loop_name: str) -> None:
    in_fd = os.open(os.devnull, os.O_RDONLY)
    if target == "full":
        fd = os.open("/dev/full", os.O_WRONLY)
    else:
        rfd, fd = os.pipe()
        os.close(rfd)

    async def main() -> None:
        std = await StdStreams.open(stdin_fd=in_fd, stdout_fd=fd)
        try:
            std.writer.write(DATA[:100_000])
            with pytest.raises(StdioError, match="cannot write to standard output"):
                await std.writer.drain()
                await std.finish_output(10)
        finally:
            std.close()

    try:
        run(loop_name, main)
    finally:
        os.close(fd)
        os.close(in_fd)


def test_the_probe_asks_the_kernel_not_the_file_type(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    with open(path, "rb") as f, open(os.devnull, "rb") as null, open("/dev/zero", "rb") as zero:
        assert not loop_can_watch(f.fileno())
        assert not loop_can_watch(null.fileno())  # a character device, and epoll refuses it
        assert not loop_can_watch(zero.fileno())
    r, w = os.pipe()
    master, slave = pty.openpty()
    a, b = socket.socketpair()
    try:
        assert all(loop_can_watch(fd) for fd in (r, w, slave, a.fileno()))
    finally:
        for fd in (r, w, master, slave):
            os.close(fd)
        a.close()
        b.close()


def test_file_stdin_is_read_with_flow_control(tmp_path: Path) -> None:
    data = os.urandom(20 * 1024 * 1024)
    path = tmp_path / "input"
    path.write_bytes(data)
    out = os.open(os.devnull, os.O_WRONLY)

    async def main() -> None:
        with open(path, "rb") as f:
            std = await StdStreams.open(stdin_fd=f.fileno(), stdout_fd=out)
            try:
                await asyncio.sleep(0.5)  # nobody reads: the feeder must stop at the reader's limit
                consumed = os.lseek(f.fileno(), 0, os.SEEK_CUR)
                assert consumed <= 12 * CHUNK, consumed
                got = hashlib.sha256()
                total = 0
                while chunk := await std.reader.read(1 << 20):
                    got.update(chunk)
                    total += len(chunk)
                assert total == len(data) and got.digest() == hashlib.sha256(data).digest()
            finally:
                std.close()

    asyncio.run(main())
    os.close(out)


@pytest.mark.parametrize("loop_name", list(LOOPS))
def test_blocking_mode_of_a_shared_pipe_is_restored(loop_name: str) -> None:
    r, w = os.pipe()
    r2, w2 = os.pipe()

    async def main() -> None:
        std = await StdStreams.open(stdin_fd=r, stdout_fd=w2)
        std.close()

    try:
        assert os.get_blocking(r) and os.get_blocking(w2)
        run(loop_name, main)
        assert os.get_blocking(r) and os.get_blocking(w2)
    finally:
        for fd in (r, w, r2, w2):
            os.close(fd)


CLOSED_FDS_PROBE = """
import os, socket, sys
from natrelay.engine.stdio import StdioError, check_stdout, reserve_standard_fds
reserve_standard_fds()
s = socket.socket()  # must not take 0, 1 or 2
print(s.fileno(), file=sys.stderr)
print(os.read(0, 10), file=sys.stderr)
try:
    check_stdout()
    print("stdout ok", file=sys.stderr)
except StdioError as exc:
    print("refused:", exc.strerror, file=sys.stderr)
"""


@pytest.mark.parametrize("closed", [(0,), (1,), (0, 1)])
def test_closed_standard_descriptors(closed: tuple[int, ...]) -> None:
    def close_them() -> None:
        for fd in closed:
            os.close(fd)

    done = subprocess.run([sys.executable, "-c", CLOSED_FDS_PROBE], preexec_fn=close_them,
                          stdin=subprocess.DEVNULL, stdout=subprocess.PIPE if 1 not in closed else None,
                          stderr=subprocess.PIPE, text=True, timeout=30)
    lines = done.stderr.splitlines()
    assert done.returncode == 0, done.stderr
    assert int(lines[0]) > 2  # the socket got a fresh number
    assert lines[1] == "b''"  # closed stdin reads as empty input
    if 1 in closed:
        assert lines[2].startswith("refused: standard output is closed")
    else:
        assert lines[2] == "stdout ok"
