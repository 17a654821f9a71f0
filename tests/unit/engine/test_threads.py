"""Forwarding threads: sessions handed from a home loop to worker loops, ends reported back home."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
from collections.abc import AsyncIterator

import pytest

from natrelay.engine.forward import ForwardEngine
from natrelay.engine.threads import ForwardingThreads, ThreadedSession, same_loop_kind
from tests.unit.engine._forwarding import (
    LOOP_KINDS,
    abort,
    eventually,
    open_fds,
    read_all,
    read_exact,
    run,
    send_all,
    stream_pair,
)


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


class Closes:
    """What on_close saw: (handle, reason, thread) per call."""

    def __init__(self) -> None:
        self.calls: list[tuple[ThreadedSession, str, int]] = []

    def __call__(self, handle: ThreadedSession, reason: str) -> None:
        self.calls.append((handle, reason, threading.get_ident()))

    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.calls]


@contextlib.asynccontextmanager
async def running(count: int) -> AsyncIterator[ForwardingThreads]:
    """Started threads, closed even when the test fails (they would outlive it otherwise)."""
    threads = ForwardingThreads(count)
    threads.start()
    try:
        yield threads
    finally:
        threads.close()


def _session(threads: ForwardingThreads, closes: Closes, **kw: object
             ) -> tuple[ThreadedSession, socket.socket, socket.socket]:
    """A session whose outer ends (returned) talk through the threads; relay ends are handed over."""
    ca, ra = stream_pair("tcp")
    cb, rb = stream_pair("tcp")
    for s in (ca, cb):
        s.setblocking(False)
    handle = threads.start_session(ra, rb, on_close=closes, **kw)  # type: ignore[arg-type]
    return handle, ca, cb


def test_sessions_spread_over_the_threads_forward_exactly_and_report_home(loop_kind: str) -> None:
    async def main() -> None:
        home = threading.get_ident()
        async with running(2) as threads:
            closes = Closes()
            sessions = [_session(threads, closes, context=i) for i in range(4)]
            assert threads.load() == [2, 2] and len(threads) == 4
            assert sorted(h.worker for h, _, _ in sessions) == [0, 0, 1, 1]
            payload = os.urandom(300_000)
            for handle, ca, cb in sessions:
                await send_all(ca, payload)
                assert await read_exact(cb, len(payload)) == payload
                await send_all(cb, b"back")
                assert await read_exact(ca, 4) == b"back"
                # Counted on the worker, read here.
                await eventually(lambda h=handle: h.counters.total == len(payload) + 4)  # type: ignore[misc]
                assert (handle.counters.a_to_b, handle.counters.b_to_a) == (len(payload), 4)
                ca.shutdown(socket.SHUT_WR)
                cb.shutdown(socket.SHUT_WR)
                assert await read_all(ca) == b"" and await read_all(cb) == b""
            await eventually(lambda: len(closes.calls) == 4)
            assert closes.reasons() == ["done"] * 4
            assert {t for _, _, t in closes.calls} == {home}
            assert sorted(h.context for h, _, _ in closes.calls) == [0, 1, 2, 3]  # type: ignore[type-var]
            assert threads.load() == [0, 0] and len(threads) == 0
            for _, ca, cb in sessions:
                ca.close()
                cb.close()

    run(loop_kind, main)


def test_workers_run_the_home_loop_kind(loop_kind: str) -> None:
    async def main() -> None:
        async with running(2) as threads:
            engines = threads.engines()
            assert len(engines) == 2 and len({id(e.loop) for e in engines}) == 2
            home = asyncio.get_running_loop()
            assert all(type(e.loop) is type(home) for e in engines)
            other = same_loop_kind(home)()
            assert type(other) is type(home)
            other.close()
        assert not any(t.name.startswith("natrelay-forward-") for t in threading.enumerate())

    run(loop_kind, main)


def test_close_by_the_owner_runs_on_the_worker_and_reports_once(loop_kind: str) -> None:
    async def main() -> None:
        async with running(2) as threads:
            closes = Closes()
            handle, ca, cb = _session(threads, closes)
            await send_all(ca, b"hi")
            assert await read_exact(cb, 2) == b"hi"
            handle.close("disconnected")
            handle.close("again")  # before the report arrives: still one close, one report
            assert await read_all(ca) == b"" and await read_all(cb) == b""
            await eventually(lambda: bool(closes.calls))
            await asyncio.sleep(0.05)
            assert closes.reasons() == ["disconnected"] and handle.is_closed
            handle.close("after")  # after the report: nothing happens
            await asyncio.sleep(0.05)
            assert closes.reasons() == ["disconnected"]
            ca.close()
            cb.close()

    run(loop_kind, main)


def test_reset_on_a_worker_closes_both_ends(loop_kind: str) -> None:
    async def main() -> None:
        async with running(1) as threads:
            closes = Closes()
            _handle, ca, cb = _session(threads, closes)
            abort(ca)
            await eventually(lambda: bool(closes.calls))
            assert closes.reasons() == ["reset"]
            assert await read_all(cb, expect_reset=True) == b""
            cb.close()

    run(loop_kind, main)


def test_idle_timeout_fires_on_the_worker_from_the_last_byte(loop_kind: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        async with running(2) as threads:
            closes = Closes()
            handle, ca, cb = _session(threads, closes, idle_timeout=0.3)
            for _ in range(3):  # traffic keeps it open past the limit
                await asyncio.sleep(0.15)
                await send_all(ca, b"k")
                assert await read_exact(cb, 1) == b"k"
            quiet = loop.time()
            await eventually(lambda: bool(closes.calls), timeout=5)
            assert closes.reasons() == ["idle"]
            assert loop.time() - quiet >= 0.25
            assert handle.last_activity >= handle.started_at
            ca.close()
            cb.close()

    run(loop_kind, main)


def test_close_ends_every_session_and_reports_before_returning(loop_kind: str) -> None:
    async def main() -> None:
        async with running(2) as threads:
            closes = Closes()
            outer = []
            for _ in range(6):
                _h, ca, cb = _session(threads, closes)
                outer += [ca, cb]
            threads.close("stopping")
            assert closes.reasons() == ["stopping"] * 6 and len(threads) == 0
            assert not any(t.name.startswith("natrelay-forward-") for t in threading.enumerate())
            for s in outer:
                assert await read_all(s) == b""
                s.close()
            with pytest.raises(RuntimeError):
                _session(threads, closes)

    run(loop_kind, main)


def test_a_session_the_worker_cannot_start_is_reported_as_an_error(loop_kind: str) -> None:
    async def main() -> None:
        async with running(1) as threads:
            closes = Closes()
            a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)  # not a stream: refused
            threads.start_session(a, b, on_close=closes)
            await eventually(lambda: bool(closes.calls))
            assert closes.reasons() == ["error"] and a.fileno() < 0 and b.fileno() < 0
            assert threads.load() == [0]

    run(loop_kind, main)


def test_misuse_is_refused() -> None:
    async def main() -> None:
        with pytest.raises(ValueError):
            ForwardingThreads(0)
        threads = ForwardingThreads(1)
        a, b = socket.socketpair()
        with pytest.raises(RuntimeError):
            threads.start_session(a, b)  # not started
        threads.start()
        with pytest.raises(ValueError):
            threads.start_session(a, b, idle_timeout=0)
        a.close()
        b.close()
        threads.close()

    run("asyncio", main)


def test_a_worker_that_cannot_start_fails_start() -> None:
    def broken(loop: asyncio.AbstractEventLoop) -> ForwardEngine:
        raise OSError("no engine here")

    async def main() -> None:
        threads = ForwardingThreads(2, engine_factory=broken)
        with pytest.raises(RuntimeError, match="no engine here"):
            threads.start()

    run("asyncio", main)


def test_no_descriptor_leaks_after_200_sessions(loop_kind: str) -> None:
    async def main() -> None:
        await asyncio.sleep(0)
        before = open_fds()
        async with running(2) as threads:
            running_fds = open_fds()  # two loops' own descriptors
            closes = Closes()
            for _batch in range(10):
                batch = [_session(threads, closes) for _ in range(20)]
                for i, (_h, ca, cb) in enumerate(batch):
                    await send_all(ca, b"x")
                    assert await read_exact(cb, 1) == b"x"
                    if i % 2:
                        abort(ca)
                    else:
                        ca.close()
                    cb.close()
            await eventually(lambda: len(closes.calls) == 200)
            assert threads.load() == [0, 0]
            assert set(closes.reasons()) <= {"done", "reset"}
            engines = threads.engines()
            assert sum(e.totals.closed for e in engines) == 200
            assert all(e.pipes_in_use == 0 for e in engines)
            # Only the pools' spare pipes (two descriptors each) stay open between sessions.
            assert open_fds() == running_fds + 2 * sum(e.pool.spare for e in engines)
        assert open_fds() == before

    run(loop_kind, main)
