"""What ForwardEngine.start does to the sockets it takes: non-blocking always, Nagle off unless told done.

The relay turns Nagle off at accept; ``nodelay_set`` lets it skip repeating that per socket
(one system call each, every pairing). Asserted through the socket options themselves.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from natrelay.engine.forward import ForwardEngine


def _tcp_pair() -> tuple[socket.socket, socket.socket]:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        a = socket.create_connection(srv.getsockname())
        b, _ = srv.accept()
    return a, b


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.mark.parametrize("nodelay_set", [False, True])
def test_start_sets_non_blocking_and_nagle_unless_the_caller_did(nodelay_set: bool) -> None:
    async def main() -> None:
        engine = ForwardEngine(asyncio.get_running_loop())
        a, b = _tcp_pair()
        assert a.getblocking() and _nodelay(a) == 0 and _nodelay(b) == 0
        session = engine.start(a, b, nodelay_set=nodelay_set)
        try:
            assert not a.getblocking() and not b.getblocking()
            # nodelay_set means "already done": the engine leaves the option as it found it.
            expected = 0 if nodelay_set else 1
            assert (_nodelay(a), _nodelay(b)) == (expected, expected)
        finally:
            session.close()
            engine.close()

    asyncio.run(main())


def test_start_takes_over_a_reader_already_registered_on_its_loop() -> None:
    """A listener's reader still on the socket is replaced: bytes are forwarded, never seen by it."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop)
        x, a = _tcp_pair()  # peer x talks to the relay's socket a
        y, b = _tcp_pair()  # peer y talks to the relay's socket b
        seen: list[str] = []
        for s in (a, b):
            s.setblocking(False)
            loop.add_reader(s.fileno(), seen.append, "listener")
        session = engine.start(a, b)
        x.sendall(b"hello")
        y.settimeout(10)
        got = await loop.run_in_executor(None, y.recv, 5)
        assert got == b"hello"
        x.close()
        y.close()
        assert await asyncio.wait_for(session.closed, 10) in ("done", "reset")
        assert seen == []
        engine.close()

    asyncio.run(main())
