"""Forwarding engine behaviour, on both loops and both forwarding methods.

Every test runs for (asyncio, uvloop) x (splice, portable): the two paths must be
indistinguishable from the peers' side.
"""

from __future__ import annotations

import asyncio
import os
import socket

import pytest

from natrelay.engine.forward import ForwardEngine, Method, start_forwarding
from natrelay.engine.session import CLOSED, DONE

from ._forwarding import (
    LOOP_KINDS,
    METHODS,
    POLLERS,
    digest,
    eventually,
    make_rig,
    open_fds,
    read_all,
    read_exact,
    run,
    send_all,
    set_buffers,
    skip_if_unsupported,
)

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.parametrize("loop_kind", LOOP_KINDS),
    pytest.mark.parametrize("method", METHODS),
    pytest.mark.parametrize("poller", POLLERS),
]


@pytest.fixture(autouse=True)
def _supported(method: Method) -> None:
    skip_if_unsupported(method)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_both_directions_exact_bytes_and_counters(
    loop_kind: str, method: Method, poller: str, kind: str
) -> None:
    up = os.urandom(3_000_017)
    down = os.urandom(1_234_567)

    async def main() -> None:
        rig = make_rig(method, kind, poller=poller)
        got_b, got_a, _, _ = await asyncio.wait_for(
            asyncio.gather(
                read_all(rig.cb),
                read_all(rig.ca),
                send_all(rig.ca, up, shut=True),
                send_all(rig.cb, down, shut=True),
            ),
            20,
        )
        assert digest(got_b) == digest(up)
        assert digest(got_a) == digest(down)
        assert await asyncio.wait_for(rig.session.closed, 5) == DONE
        assert rig.closes == [DONE]
        c = rig.session.counters
        assert (c.a_to_b, c.b_to_a) == (len(up), len(down))
        t = rig.engine.totals
        assert (t.a_to_b, t.b_to_a, t.started, t.closed, t.reasons) == (len(up), len(down), 1, 1, {DONE: 1})
        assert rig.ra.fileno() == -1 and rig.rb.fileno() == -1
        assert rig.engine.pipes_in_use == 0 and len(rig.engine) == 0
        rig.close_clients()
        rig.engine.close()

    run(loop_kind, main)


def test_pending_bytes_go_first_and_are_counted(loop_kind: str, method: Method, poller: str) -> None:
    async def main() -> None:
        rig = make_rig(method, poller=poller, a_to_b=b"already-read-from-a:", b_to_a=b"already-read-from-b:")
        await send_all(rig.ca, b"more-a", shut=True)
        await send_all(rig.cb, b"more-b", shut=True)
        assert await asyncio.wait_for(read_all(rig.cb), 5) == b"already-read-from-a:more-a"
        assert await asyncio.wait_for(read_all(rig.ca), 5) == b"already-read-from-b:more-b"
        assert await asyncio.wait_for(rig.session.closed, 5) == DONE
        c = rig.session.counters
        assert (c.a_to_b, c.b_to_a) == (26, 26)
        rig.close_clients()
        rig.engine.close()

    run(loop_kind, main)


@pytest.mark.parametrize("first", ["a", "b"])
def test_half_close_each_direction(loop_kind: str, method: Method, poller: str, first: str) -> None:
    async def main() -> None:
        rig = make_rig(method, poller=poller)
        closer, other = (rig.ca, rig.cb) if first == "a" else (rig.cb, rig.ca)
        await send_all(closer, b"last words", shut=True)
        # The other peer gets everything, then EOF...
        assert await asyncio.wait_for(read_all(other), 5) == b"last words"
        # ...while the session stays open and the reverse direction still works.
        assert not rig.session.is_closed
        assert rig.session.half_closed() == ((True, False) if first == "a" else (False, True))
        for i in range(3):
            msg = f"reply {i}".encode()
            await send_all(other, msg)
            assert await asyncio.wait_for(read_exact(closer, len(msg)), 5) == msg
        assert not rig.session.is_closed
        other.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(read_all(closer), 5) == b""
        assert await asyncio.wait_for(rig.session.closed, 5) == DONE
        rig.close_clients()
        rig.engine.close()

    run(loop_kind, main)


@pytest.mark.parametrize("kind", ["unix", "tcp"])
def test_close_after_drain_when_sender_closes_early(
    loop_kind: str, method: Method, poller: str, kind: str
) -> None:
    """A peer that writes and closes before the other reads loses nothing."""
    data = os.urandom(2_000_000)

    async def main() -> None:
        rig = make_rig(method, kind, poller=poller, buffers=65536)
        sender = asyncio.ensure_future(send_all(rig.ca, data))
        # The receiver is not reading: the relay fills up and stops.
        await eventually(lambda: rig.session.buffered > 0)
        await asyncio.sleep(0.05)
        assert rig.session.counters.a_to_b < len(data)
        got = asyncio.ensure_future(read_all(rig.cb))
        await asyncio.wait_for(sender, 20)
        rig.ca.close()  # full close, everything already handed to the kernel
        assert digest(await asyncio.wait_for(got, 20)) == digest(data)
        assert rig.session.counters.a_to_b == len(data)
        # b finishes too: the session ends cleanly.
        rig.cb.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(rig.session.closed, 5) == DONE
        rig.close_clients()
        rig.engine.close()

    run(loop_kind, main)


def test_drain_delivers_held_bytes_then_half_closes_both(loop_kind: str, method: Method, poller: str) -> None:
    data = os.urandom(1_500_000)

    async def main() -> None:
        rig = make_rig(method, poller=poller, buffers=65536)
        sender = asyncio.ensure_future(send_all(rig.ca, data))
        await eventually(lambda: rig.session.buffered > 0)
        rig.session.drain("shutdown")
        # Bytes the relay already read still arrive, then EOF; nothing more is read from a.
        got = await asyncio.wait_for(read_all(rig.cb), 10)
        assert 0 < len(got) < len(data)
        assert got == data[: len(got)]
        assert rig.session.counters.a_to_b == len(got)
        # a gets EOF; closing a socket with a's unread bytes in it may turn that into a reset.
        assert await asyncio.wait_for(read_all(rig.ca, expect_reset=True), 5) == b""
        assert await asyncio.wait_for(rig.session.closed, 5) == "shutdown"
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        rig.close_clients()
        rig.engine.close()

    run(loop_kind, main)


def test_backpressure_stops_reading_and_bounds_memory(loop_kind: str, method: Method, poller: str) -> None:
    """A receiver that stops reading stalls the sender; the relay holds at most one chunk."""
    chunk = 64 * 1024

    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop, method=method, poller=poller, pipe_size=chunk, buffer_size=chunk)
        rig = make_rig(method, "tcp", engine=engine, buffers=32 * 1024)
        payload = os.urandom(chunk)
        sent = 0
        held: list[int] = []
        stalled_since = loop.time()
        # Push as fast as the path accepts until nothing has moved for 0.3 s.
        while loop.time() - stalled_since < 0.3:
            try:
                n = rig.ca.send(payload[sent % chunk :])
            except BlockingIOError:
                n = 0
            if n:
                sent += n
                stalled_since = loop.time()
            held.append(rig.session.buffered)
            await asyncio.sleep(0.001 if n == 0 else 0)
            assert sent < 64 * 1024 * 1024, "the relay never pushed back"
        assert max(held) <= chunk
        relayed = rig.session.counters.a_to_b
        assert relayed < sent  # the rest sits in the sender's and relay's kernel buffers
        # Once the receiver reads, every byte arrives intact.
        rig.ca.shutdown(socket.SHUT_WR)
        got = await asyncio.wait_for(read_all(rig.cb), 20)
        assert len(got) == sent == rig.session.counters.a_to_b
        assert got == (payload * (sent // chunk + 1))[:sent]
        rig.close_clients()
        engine.close()

    run(loop_kind, main)


def test_local_close_and_abort(loop_kind: str, method: Method, poller: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop, method=method, poller=poller)
        rig = make_rig(method, "tcp", engine=engine)
        await send_all(rig.ca, b"ping")
        assert await asyncio.wait_for(read_exact(rig.cb, 4), 5) == b"ping"
        rig.session.close()
        assert rig.closes == [CLOSED]
        assert rig.session.closed.result() == CLOSED
        assert await asyncio.wait_for(read_all(rig.ca), 5) == b""
        assert await asyncio.wait_for(read_all(rig.cb), 5) == b""
        rig.session.close("again")  # idempotent
        assert rig.closes == [CLOSED]
        rig.close_clients()

        rig2 = make_rig(method, "tcp", engine=engine)
        rig2.session.close("kicked", abort=True)
        for s in (rig2.ca, rig2.cb):
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(read_all(s), 5)
        assert engine.totals.reasons == {CLOSED: 1, "kicked": 1}
        rig2.close_clients()
        engine.close()

    run(loop_kind, main)


def test_engine_close_closes_every_session(loop_kind: str, method: Method, poller: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        engine = ForwardEngine(loop, method=method, poller=poller)
        rigs = [make_rig(method, engine=engine) for _ in range(20)]
        assert len(engine) == 20
        engine.close("shutdown")
        assert len(engine) == 0 and engine.is_closed
        assert all(r.closes == ["shutdown"] for r in rigs)
        for r in rigs:
            r.close_clients()
        assert open_fds() == before
        with pytest.raises(RuntimeError):
            make_rig(method, engine=engine)

    run(loop_kind, main)


def test_start_forwarding_without_engine_cleans_up(loop_kind: str, method: Method, poller: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = open_fds()
        ca, ra = socket.socketpair()
        rb, cb = socket.socketpair()
        set_buffers(65536, ca, cb)
        ca.setblocking(False)
        cb.setblocking(False)
        reasons: list[str] = []
        session = start_forwarding(loop, ra, rb, idle_timeout=None, on_close=lambda s, r: reasons.append(r),
                                   method=method, poller=poller)
        data = os.urandom(500_000)
        got, _ = await asyncio.gather(read_all(cb), send_all(ca, data, shut=True))
        assert got == data
        cb.shutdown(socket.SHUT_WR)
        assert await asyncio.wait_for(session.closed, 5) == DONE
        assert reasons == [DONE] and session.engine.is_closed
        ca.close()
        cb.close()
        assert open_fds() == before

    run(loop_kind, main)
