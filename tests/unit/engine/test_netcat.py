"""The netcat join's exit rules, with a real socket as the tunnel and real pipes and devices as stdio."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time

from natrelay.engine.netcat import EXIT_LOCAL_IO, EXIT_OK, Transfer
from natrelay.engine.stdio import StdStreams

DATA = os.urandom(3 * 1024 * 1024)


def far_side(sock: socket.socket, received: bytearray) -> None:
    """The other end of the tunnel: send DATA, end it, read until the join closes (or resets)."""
    with contextlib.suppress(OSError):
        sock.sendall(DATA)
        sock.shutdown(socket.SHUT_WR)
        while chunk := sock.recv(65536):
            received += chunk
    sock.close()


async def join(stdout_fd: int) -> int:
    ours, theirs = socket.socketpair()
    threading.Thread(target=far_side, args=(theirs, bytearray()), daemon=True).start()
    streams = await asyncio.open_connection(sock=ours)
    null = os.open(os.devnull, os.O_RDONLY)
    try:
        std = await StdStreams.open(stdin_fd=null, stdout_fd=stdout_fd)
        result = await Transfer(streams).run(asyncio.Event(), std=std)
        return result.code
    finally:
        os.close(null)


def test_the_join_returns_only_once_everything_received_is_written_out() -> None:
    """A slow reader of stdout: success may only be reported once the last byte has left the process.

    The event loop ends right after ``run()`` returns, as in the program; anything still in the
    writer's buffer then would be lost.
    """
    r, w = os.pipe()
    collected = bytearray()

    def slow_reader() -> None:
        time.sleep(0.5)  # the pipe fills; the join must wait, not return with data still buffered
        while chunk := os.read(r, 65536):
            collected.extend(chunk)
            time.sleep(0.005)  # and stays slow: the writer always has data waiting

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    code = asyncio.run(join(w))
    os.close(w)
    reader.join(10)
    os.close(r)
    assert code == EXIT_OK
    assert len(collected) == len(DATA) and bytes(collected) == DATA


def test_a_stdout_that_cannot_take_the_data_is_status_3() -> None:
    full = os.open("/dev/full", os.O_WRONLY)
    try:
        code = asyncio.run(join(full))
    finally:
        os.close(full)
    assert code == EXIT_LOCAL_IO
