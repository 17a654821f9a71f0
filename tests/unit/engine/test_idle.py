"""Idle detection through the engine's single timer wheel, with a fake clock."""

from __future__ import annotations

import asyncio
import os

import pytest

from natrelay.engine.forward import ForwardEngine, Method
from natrelay.engine.session import IDLE

from ._forwarding import (
    LOOP_KINDS,
    METHODS,
    eventually,
    make_rig,
    read_all,
    read_exact,
    run,
    send_all,
    skip_if_unsupported,
)

pytestmark = [
    pytest.mark.timeout(30),
    pytest.mark.parametrize("loop_kind", LOOP_KINDS),
    pytest.mark.parametrize("method", METHODS),
]


@pytest.fixture(autouse=True)
def _supported(method: Method) -> None:
    skip_if_unsupported(method)


class FakeClock:
    def __init__(self) -> None:
        self.now = 500.0

    def __call__(self) -> float:
        return self.now


def test_idle_timeout_counts_from_last_byte(loop_kind: str, method: Method) -> None:
    async def main() -> None:
        clock = FakeClock()
        engine = ForwardEngine(asyncio.get_running_loop(), method=method, clock=clock)
        rig = make_rig(method, engine=engine, idle_timeout=10.0)
        quiet = make_rig(method, engine=engine, idle_timeout=None)
        t0 = clock.now
        clock.now = t0 + 6
        engine.timers.poll()
        assert not rig.session.is_closed
        # A byte at t0+6 moves the deadline to t0+16.
        await send_all(rig.ca, b"x")
        assert await asyncio.wait_for(read_exact(rig.cb, 1), 5) == b"x"
        assert rig.session.last_activity == t0 + 6
        clock.now = t0 + 12
        engine.timers.poll()
        assert not rig.session.is_closed
        assert engine.timers.wheel.deadline(rig.session) == t0 + 16
        clock.now = t0 + 15.9
        engine.timers.poll()
        assert not rig.session.is_closed
        clock.now = t0 + 16
        engine.timers.poll()
        assert rig.session.is_closed and rig.closes == [IDLE]
        assert await asyncio.wait_for(read_all(rig.ca), 5) == b""
        assert await asyncio.wait_for(read_all(rig.cb), 5) == b""
        # A session without an idle timeout is never touched by the wheel.
        clock.now = t0 + 10_000
        engine.timers.poll()
        assert not quiet.session.is_closed and quiet.session not in engine.timers.wheel
        for r in (rig, quiet):
            r.close_clients()
        engine.close()

    run(loop_kind, main)


def test_stalled_transfer_counts_as_idle(loop_kind: str, method: Method) -> None:
    """A receiver that never reads cannot hold a session (and its buffers) forever."""

    async def main() -> None:
        clock = FakeClock()
        engine = ForwardEngine(asyncio.get_running_loop(), method=method, clock=clock)
        rig = make_rig(method, "tcp", engine=engine, buffers=65536, idle_timeout=5.0)
        sender = asyncio.ensure_future(send_all(rig.ca, os.urandom(4_000_000)))
        await eventually(lambda: rig.session.buffered > 0)
        clock.now += 5
        engine.timers.poll()
        assert rig.closes == [IDLE]
        assert engine.pipes_in_use == 0
        sender.cancel()
        await asyncio.gather(sender, return_exceptions=True)
        rig.close_clients()
        engine.close()

    run(loop_kind, main)


def test_many_idle_sessions_share_one_loop_timer(loop_kind: str, method: Method) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        engine = ForwardEngine(loop, method=method, timer_slack=0.01)
        rigs = [make_rig(method, engine=engine, idle_timeout=0.2 + 0.001 * i) for i in range(300)]
        if loop_kind == "asyncio":
            assert len(loop._scheduled) == 1  # type: ignore[attr-defined]
        assert len(engine.timers.wheel) == 300
        closed_at: dict[int, float] = {}
        for i, r in enumerate(rigs):
            r.session.closed.add_done_callback(lambda _f, i=i: closed_at.__setitem__(i, loop.time()))
        await eventually(lambda: len(closed_at) == 300, timeout=5)
        assert all(r.closes == [IDLE] for r in rigs)
        # Never early, and late by little more than the slack (generous bound: shared CI cores).
        for i, r in enumerate(rigs):
            late = closed_at[i] - (r.session.started_at + 0.2 + 0.001 * i)
            assert -1e-6 <= late < 1.0
        for r in rigs:
            r.close_clients()
        engine.close()

    run(loop_kind, main)
