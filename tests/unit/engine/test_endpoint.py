"""The endpoint shell: while it does not read (backpressure), the peer's unread traffic is not silence."""

from __future__ import annotations

import asyncio
from typing import Any

from natrelay.engine.clock import WheelDriver
from natrelay.engine.endpoint import EndpointProtocol


class FakeLink:
    established = True

    def __init__(self) -> None:
        self.deferred: list[float] = []
        self.timers: list[float] = []

    def receive_data(self, data: bytes, now: float) -> list[bytes]:
        return []

    def send(self, payload: bytes) -> None:
        pass

    def take_output(self) -> list[bytes]:
        return []

    def handle_timer(self, now: float) -> None:
        self.timers.append(now)

    def next_deadline(self) -> float:
        return 1e9

    def defer_receive_timeout(self, now: float) -> None:
        self.deferred.append(now)


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.reading = True

    def is_reading(self) -> bool:
        return self.reading

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def is_closing(self) -> bool:
        return False

    def writelines(self, list_of_data: Any) -> None:
        pass


def test_timer_defers_the_receive_timeout_only_while_reading_is_paused() -> None:
    async def main() -> None:
        link = FakeLink()
        timers: WheelDriver[Any] = WheelDriver(asyncio.get_running_loop(), lambda p: p.on_timer())
        proto: EndpointProtocol[FakeLink] = EndpointProtocol(lambda now: link, timers, (ValueError,))
        transport = FakeTransport()
        proto.connection_made(transport)
        proto.on_timer()
        assert link.deferred == [] and len(link.timers) == 1
        transport.reading = False
        proto.on_timer()
        assert len(link.deferred) == 1 and len(link.timers) == 2
        transport.reading = True
        proto.on_timer()
        assert len(link.deferred) == 1 and len(link.timers) == 3
        timers.close()

    asyncio.run(main())
