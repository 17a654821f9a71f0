"""WheelDriver: one loop timer for every deadline, never early, coalesced within slack."""

from __future__ import annotations

import asyncio

import pytest

from natrelay.engine.clock import WheelDriver


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_fake_clock_poll_fires_due_keys_only() -> None:
    loop = asyncio.new_event_loop()
    try:
        clock = FakeClock()
        fired: list[str] = []
        d: WheelDriver[str] = WheelDriver(loop, fired.append, slack=0.05, clock=clock)
        d.schedule("a", 1010.0)
        d.schedule("b", 1020.0)
        d.schedule("c", 1005.0)
        clock.now = 1009.9
        assert d.poll() == 1 and fired == ["c"]
        clock.now = 1010.0
        assert d.poll() == 1 and fired == ["c", "a"]
        d.cancel("b")
        clock.now = 2000.0
        assert d.poll() == 0 and fired == ["c", "a"]
        d.close()
    finally:
        loop.close()


def test_callback_may_rearm_and_errors_do_not_stop_others() -> None:
    loop = asyncio.new_event_loop()
    try:
        clock = FakeClock()
        fired: list[int] = []
        d: WheelDriver[int]

        def on_expired(key: int) -> None:
            fired.append(key)
            if key == 1:
                raise RuntimeError("broken callback")
            if key == 2 and fired.count(2) == 1:
                d.schedule(2, clock.now + 5)

        d = WheelDriver(loop, on_expired, clock=clock)
        d.schedule(1, 1001.0)
        d.schedule(2, 1001.0)
        d.schedule(3, 1001.0)
        clock.now = 1001.0
        assert d.poll() == 3
        assert sorted(fired) == [1, 2, 3]
        assert d.wheel.deadline(2) == 1006.0
        clock.now = 1006.0
        d.poll()
        assert fired.count(2) == 2
        d.close()
    finally:
        loop.close()


@pytest.mark.timeout(10)
def test_real_loop_single_handle_fires_in_order_not_early() -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        fired: list[tuple[int, float]] = []
        d: WheelDriver[int] = WheelDriver(loop, lambda k: fired.append((k, loop.time())), slack=0.01)
        t0 = loop.time()
        deadlines = {k: t0 + 0.02 + 0.01 * (k % 7) for k in range(200)}
        for k, when in deadlines.items():
            d.schedule(k, when)
        # One loop timer for all 200 deadlines.
        assert len(loop._scheduled) == 1  # type: ignore[attr-defined]
        # Re-arming later keeps the single timer where it is.
        handle = d._handle
        d.schedule(0, t0 + 0.1)
        deadlines[0] = t0 + 0.1
        assert d._handle is handle
        while len(fired) < 200:
            await asyncio.sleep(0.01)
        assert sorted(k for k, _ in fired) == list(range(200))
        for k, at in fired:
            assert at >= deadlines[k]
        assert len(d.wheel) == 0
        d.close()
        assert d._handle is None

    asyncio.run(main())
