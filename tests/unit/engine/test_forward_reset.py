"""Resets from either side, at any moment, close both ends and leak nothing.

uvloop drops a poll handle after reporting an error on it (uvloop #552), so every
test here runs on uvloop as well as on asyncio's own loop.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from natrelay.engine.forward import ForwardEngine, Method
from natrelay.engine.session import DONE, ERROR, RESET

from ._forwarding import (
    LOOP_KINDS,
    METHODS,
    POLLERS,
    abort,
    eventually,
    make_rig,
    open_fds,
    read_all,
    run,
    send_all,
    skip_if_unsupported,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("loop_kind", LOOP_KINDS),
    pytest.mark.parametrize("method", METHODS),
    pytest.mark.parametrize("poller", POLLERS),
]

BLOCK = os.urandom(32 * 1024)


@pytest.fixture(autouse=True)
def _supported(method: Method) -> None:
    skip_if_unsupported(method)


class Pusher:
    """Send BLOCK repeatedly until stopped or the connection breaks, counting what the kernel took."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sent = 0
        self.error: OSError | None = None
        self._stop = False
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        view = memoryview(BLOCK)
        while not self._stop:
            try:
                n = self.sock.send(view[self.sent % len(BLOCK) :])
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            except OSError as exc:
                self.error = exc
                return
            self.sent += n
            await asyncio.sleep(0)

    async def stop(self) -> int:
        self._stop = True
        await asyncio.wait_for(self.task, 5)
        return self.sent


async def survivor_sees_end(sock: socket.socket) -> None:
    """The surviving peer must learn the stream ended: EOF or reset, never silence."""
    await asyncio.wait_for(read_all(sock, expect_reset=True), 5)


@pytest.mark.parametrize("who", ["a", "b"])
def test_reset_mid_transfer_closes_both_and_leaks_nothing(
    loop_kind: str, method: Method, poller: str, who: str
) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        engine = ForwardEngine(loop, method=method, poller=poller)
        rig = make_rig(method, "tcp", engine=engine)
        sender = Pusher(rig.ca)
        reader = asyncio.ensure_future(read_all(rig.cb, expect_reset=True))
        await eventually(lambda: rig.session.counters.a_to_b > 1_000_000)
        if who == "a":
            await sender.stop()
            abort(rig.ca)
            survivor = rig.cb
        else:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            abort(rig.cb)
            survivor = rig.ca
        assert await asyncio.wait_for(rig.session.closed, 5) == RESET
        assert rig.session.close_side == who
        assert rig.ra.fileno() == -1 and rig.rb.fileno() == -1
        assert engine.pipes_in_use == 0 and len(engine) == 0
        if who == "a":
            await asyncio.wait_for(reader, 5)  # b saw EOF or reset, not a hang
        else:
            # a's writes fail instead of blocking forever
            await eventually(lambda: sender.error is not None)
            await sender.stop()
            await survivor_sees_end(survivor)
        survivor.close()
        engine.close()
        assert open_fds() == before

    run(loop_kind, main)


def test_reset_by_stalled_receiver(loop_kind: str, method: Method, poller: str) -> None:
    """The relay is blocked writing to b when b resets: the writer callback must notice."""

    async def main() -> None:
        rig = make_rig(method, "tcp", poller=poller, buffers=65536)
        sender = Pusher(rig.ca)
        await eventually(lambda: rig.session.buffered > 0)
        await asyncio.sleep(0.05)
        abort(rig.cb)
        assert await asyncio.wait_for(rig.session.closed, 5) == RESET
        assert rig.session.close_side == "b"
        await eventually(lambda: sender.error is not None)
        await sender.stop()
        await survivor_sees_end(rig.ca)
        assert rig.engine.pipes_in_use == 0
        rig.ca.close()
        rig.engine.close()

    run(loop_kind, main)


def test_reset_by_sender_while_receiver_stalled(loop_kind: str, method: Method, poller: str) -> None:
    """a resets while the relay is not reading it; b resuming surfaces the reset."""

    async def main() -> None:
        rig = make_rig(method, "tcp", poller=poller, buffers=65536)
        sender = Pusher(rig.ca)
        await eventually(lambda: rig.session.buffered > 0)
        await asyncio.sleep(0.05)
        sent = await sender.stop()
        abort(rig.ca)
        got = await asyncio.wait_for(read_all(rig.cb, expect_reset=True), 10)
        assert len(got) <= sent
        assert got == (BLOCK * (len(got) // len(BLOCK) + 1))[: len(got)]
        assert await asyncio.wait_for(rig.session.closed, 5) == RESET
        assert rig.session.close_side == "a"
        assert rig.engine.pipes_in_use == 0
        rig.cb.close()
        rig.engine.close()

    run(loop_kind, main)


def test_reset_right_behind_data_many_times(loop_kind: str, method: Method, poller: str) -> None:
    """Data then an immediate reset, with one chunk per wake-up: the reset must never be lost."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        engine = ForwardEngine(loop, method=method, poller=poller, pipe_size=4096, buffer_size=4096,
                               max_chunks_per_wakeup=1)
        for _ in range(20):
            rig = make_rig(method, "tcp", engine=engine)
            reader = asyncio.ensure_future(read_all(rig.cb, expect_reset=True))
            await send_all(rig.ca, os.urandom(200_000))
            abort(rig.ca)
            assert await asyncio.wait_for(rig.session.closed, 5) in (RESET, DONE)
            await asyncio.wait_for(reader, 5)
            rig.cb.close()
        assert engine.totals.closed == 20 and len(engine) == 0
        assert engine.pipes_in_use == 0
        engine.close()
        assert open_fds() == before

    run(loop_kind, main)


def test_thousand_sessions_leave_no_descriptor(loop_kind: str, method: Method, poller: str) -> None:
    n = 1000

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        engine = ForwardEngine(loop, method=method, poller=poller)
        rigs = [make_rig(method, engine=engine) for _ in range(n)]
        assert len(engine) == n
        # Traffic through every session, both ways.
        await asyncio.gather(*(send_all(r.ca, b"hello from a") for r in rigs))
        await asyncio.gather(*(send_all(r.cb, b"hello from b") for r in rigs))
        await eventually(lambda: all(r.session.counters.total == 24 for r in rigs))
        # A third end cleanly, a third lose both clients abruptly, a third are shut by the engine.
        clean, dropped, rest = rigs[: n // 3], rigs[n // 3 : 2 * n // 3], rigs[2 * n // 3 :]
        for r in clean:
            r.ca.shutdown(socket.SHUT_WR)
            r.cb.shutdown(socket.SHUT_WR)
        for r in dropped:
            r.close_clients()
        await eventually(lambda: len(engine) == len(rest))
        engine.close()
        assert all(r.closes == [DONE] for r in clean)
        assert all(len(r.closes) == 1 and r.closes[0] in (DONE, RESET, ERROR) for r in dropped)
        assert all(r.closes == ["shutdown"] for r in rest)
        assert engine.totals.closed == n and engine.pipes_in_use == 0
        assert engine.totals.a_to_b == n * 12 and engine.totals.b_to_a == n * 12
        for r in rigs:
            r.close_clients()
        assert open_fds() == before

    run(loop_kind, main)
