"""The host redials a router connection that was up after about a second (--retry-interval is for
dials that failed): a NAT that dropped its mapping must cost seconds, not the C++ host's 10 s."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from natrelay.aspia.peer.host import AspiaHost, HostSettings
from natrelay.aspia.peer.users import Credentials, HostUsers
from tests.unit.aspia.helpers import cheap_random
from tests.unit.aspia.peer.standins import HOST, ROUTER_KEY, StandInRouter

pytestmark = pytest.mark.timeout(60)


async def _until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate()`` holds (TimeoutError after ``timeout``)."""
    loop = asyncio.get_running_loop()
    start = loop.time()
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)
    return loop.time() - start


def test_a_lost_router_connection_is_redialled_within_seconds_despite_a_long_retry_interval(
        tmp_path: Path) -> None:
    async def scenario() -> float:
        router = StandInRouter(None)
        await router.start()
        settings = HostSettings(router=(HOST, router.port), router_key=ROUTER_KEY, expose=(HOST, 9),
                                state_path=tmp_path / "state.json", retry_interval=30, connect_timeout=5,
                                random_bytes=cheap_random(1))
        host = AspiaHost(settings, HostUsers([Credentials("bob", b"pw")]))
        stop = asyncio.Event()
        task = asyncio.ensure_future(host.run(stop))
        try:
            await _until(lambda: bool(router.sessions and router.sessions[0].host_ids), 20)
            for session in list(router.sessions):
                session.abort("the path went away")
            return await _until(lambda: host.router_connections == 2 and bool(router.sessions), 20)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
            await router.close()

    first = asyncio.run(scenario())
    assert first < 5, first  # about 1 s (0.5..1.5 jittered) plus the handshake, never retry_interval
