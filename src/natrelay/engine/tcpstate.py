"""A TCP reset that reaches us as an end of input, told apart from a real end.

Why this exists: a join that passed such a reset on as a clean end would hand the program at
the other side a shorter stream that looks complete (measured: the Aspia ``--listen`` reset
test saw "eof" in about 1 run of 3 on a loaded machine).

How it happens (uvloop, seen in that test): Linux reports a reset once, as the socket's pending
error, to the first call that asks. Python code writes into a transport (libuv tries the
``write`` at once); the write fails and takes the error, but libuv reports the failure only in
its next loop turn. In this turn, the same poll already said the socket is readable, so libuv
reads it: the socket is shut down with no error left, the read returns 0 bytes, and the protocol
hears ``eof_received`` before it hears of the failed write.

How it is told apart: by the connection's state. A peer's FIN leaves the connection in
CLOSE_WAIT, a reset in CLOSE. Once our own FIN has gone out, a FIN from the peer also ends in
CLOSE (the kernel hands the connection to a time-wait entry), so the state counts only while our
FIN cannot have gone out: we have not half-closed, or the transport still holds bytes to write
before it (the failed write is among them). A transport that has already failed (asyncio's own
loop reports the failed write at once, yet a task may read the end of input its reader was fed
just before) is closing: that says it too.
"""

from __future__ import annotations

import asyncio
import socket

#: ``tcpi_state`` of a connection that was reset (``TCP_CLOSE`` in ``include/net/tcp_states.h``).
_TCP_CLOSE = 7


def reset_behind_eof(transport: asyncio.WriteTransport, *, half_closed: bool) -> bool:
    """Whether an end of input just read from ``transport`` was in truth a reset.

    ``half_closed``: we asked for our own sending side of this connection to end. The caller
    must not have closed ``transport``. Anything that is not a TCP socket, or whose state cannot
    be read, is taken at its word: False.
    """
    sock = transport.get_extra_info("socket")
    if sock is None or sock.type != socket.SOCK_STREAM:
        return False
    if sock.family not in (socket.AF_INET, socket.AF_INET6):
        return False
    if transport.is_closing():
        # Nobody closed it (see above): a socket transport closes itself only on a failure, here
        # the failed write, already reported while a reader was still to see the end of input.
        return True
    try:
        if half_closed and transport.get_write_buffer_size() == 0:
            return False  # our FIN may have gone out: CLOSE is then also a clean end
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)
    except (OSError, ValueError):  # a closed socket; uvloop's stand-in raises ValueError then
        return False
    return bool(info) and info[0] == _TCP_CLOSE
