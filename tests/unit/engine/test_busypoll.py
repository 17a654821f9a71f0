"""The loop keeps polling for a bounded window after a delivery, and never longer.

Unit tests drive :class:`BusyPoll` with a fake loop and clock; the last ones check, on both real
loops, that the forwarding engine starts the window when it delivers bytes and that the window
ends by itself (a relay must not burn a core after its traffic stops).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from natrelay.engine.busypoll import BUSY_POLL_ENV, DEFAULT_BUSY_POLL, BusyPoll, busy_poll_from_env
from natrelay.engine.forward import ForwardEngine

from ._forwarding import LOOP_KINDS, eventually, make_rig, read_exact, run


class FakeLoop:
    """Records call_soon callbacks; the test runs them one 'loop iteration' at a time."""

    def __init__(self) -> None:
        self.ready: list[Callable[[], Any]] = []

    def call_soon(self, callback: Callable[[], Any]) -> None:
        self.ready.append(callback)

    def iterate(self) -> None:
        ready, self.ready = self.ready, []
        for callback in ready:
            callback()


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(window: float) -> tuple[BusyPoll, FakeLoop, FakeClock]:
    loop, clock = FakeLoop(), FakeClock()
    return BusyPoll(loop, window, clock=clock), loop, clock  # type: ignore[arg-type]


def test_a_kick_keeps_the_loop_polling_until_the_window_has_passed() -> None:
    poll, loop, clock = make(50e-6)
    poll.kick()
    assert poll.spinning and len(loop.ready) == 1
    for _ in range(4):  # within the window: each iteration queues the next
        clock.now += 10e-6
        loop.iterate()
        assert len(loop.ready) == 1
    clock.now += 30e-6  # 70 us after the kick
    loop.iterate()
    assert loop.ready == [] and not poll.spinning


def test_a_kick_while_polling_extends_the_window_without_a_second_chain() -> None:
    poll, loop, clock = make(50e-6)
    poll.kick()
    clock.now += 40e-6
    poll.kick()
    assert len(loop.ready) == 1
    clock.now += 40e-6  # 80 us after the first kick, 40 after the second
    loop.iterate()
    assert len(loop.ready) == 1
    clock.now += 20e-6
    loop.iterate()
    assert loop.ready == [] and not poll.spinning


def test_a_zero_window_or_a_closed_poller_queues_nothing() -> None:
    off, loop, _ = make(0.0)
    off.kick()
    assert loop.ready == [] and not off.spinning
    poll, loop, _ = make(50e-6)
    poll.kick()
    poll.close()
    loop.iterate()
    poll.kick()
    assert loop.ready == [] and not poll.spinning


def test_a_negative_window_is_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        make(-1.0)


@pytest.mark.parametrize(("text", "seconds"), [("", DEFAULT_BUSY_POLL), ("0", 0.0), (" 120 ", 120e-6)])
def test_the_window_from_the_environment(text: str, seconds: float) -> None:
    assert busy_poll_from_env({BUSY_POLL_ENV: text} if text else {}) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["abc", "-1", "10001", "1.5"])
def test_a_bad_window_names_the_variable_and_the_allowed_values(text: str) -> None:
    with pytest.raises(ValueError, match=rf"{BUSY_POLL_ENV}=.*0\.\.10000"):
        busy_poll_from_env({BUSY_POLL_ENV: text})


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_the_engine_polls_after_forwarding_and_stops_by_itself(loop_kind: str) -> None:
    async def main() -> None:
        engine = ForwardEngine(asyncio.get_running_loop(), method="portable", busy_poll=0.5)
        rig = make_rig("portable", engine=engine)
        assert not engine.busy_poll.spinning  # starting a session is not traffic
        await asyncio.get_running_loop().sock_sendall(rig.ca, b"ping")
        assert await read_exact(rig.cb, 4) == b"ping"
        assert engine.busy_poll.spinning
        await eventually(lambda: not engine.busy_poll.spinning, timeout=10)
        rig.close_clients()
        engine.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_an_engine_with_polling_off_never_polls(loop_kind: str) -> None:
    async def main() -> None:
        engine = ForwardEngine(asyncio.get_running_loop(), method="portable", busy_poll=0)
        rig = make_rig("portable", engine=engine)
        await asyncio.get_running_loop().sock_sendall(rig.ca, b"ping")
        assert await read_exact(rig.cb, 4) == b"ping"
        assert not engine.busy_poll.spinning
        rig.close_clients()
        engine.close()

    run(loop_kind, main)


@pytest.mark.parametrize("loop_kind", LOOP_KINDS)
def test_a_bulk_delivery_does_not_poll(loop_kind: str) -> None:
    async def main() -> None:
        engine = ForwardEngine(asyncio.get_running_loop(), method="portable", busy_poll=0.5)
        rig = make_rig("portable", engine=engine)
        rig.ca.sendall(b"x" * 32768)  # queued before the engine's first read: one 32 KiB delivery
        assert await read_exact(rig.cb, 32768) == b"x" * 32768
        assert not engine.busy_poll.spinning
        rig.close_clients()
        engine.close()

    run(loop_kind, main)


def test_a_poll_hook_is_polled_in_a_bounded_tight_loop_then_the_loop_gets_its_turn() -> None:
    loop, clock = FakeLoop(), FakeClock()
    polls: list[float] = []

    def hook() -> None:
        polls.append(clock.now)
        clock.now += 5e-6  # each poll of the engine's epoll takes 5 us

    poll = BusyPoll(loop, 50e-6, clock=clock, poll=hook)  # type: ignore[arg-type]
    poll.kick()
    loop.iterate()
    # 50 us after the kick the window is over: ten polls, and no callback left queued.
    assert len(polls) == 10
    assert loop.ready == [] and not poll.spinning

    # A kick from inside a poll (a delivery) extends the window, but one turn never holds the loop
    # longer than one window: it queues itself and lets other callbacks run.
    polls.clear()
    kicks = iter([True] * 30)

    def kicking_hook() -> None:
        polls.append(clock.now)
        clock.now += 5e-6
        if next(kicks, False):
            poll.kick()

    poll.poll = kicking_hook
    poll.kick()
    loop.iterate()
    assert len(polls) == 10 and len(loop.ready) == 1
    loop.iterate()
    loop.iterate()
    loop.iterate()
    assert loop.ready == [] and not poll.spinning
    assert len(polls) == 30 + 10  # 30 kicking polls, then one more window


def test_a_closed_poller_is_not_polled() -> None:
    loop, clock = FakeLoop(), FakeClock()
    calls: list[int] = []
    poll = BusyPoll(loop, 50e-6, clock=clock, poll=lambda: calls.append(1))  # type: ignore[arg-type]
    poll.kick()
    poll.close()
    loop.iterate()
    assert calls == [] and not poll.spinning
