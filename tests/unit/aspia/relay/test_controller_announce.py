"""The router link sends replacement keys in one batch while the router has plenty, at once otherwise.

A real :class:`RouterController` against the in-test router over loopback; sessions are played
on the key pool directly, as the peer listener would.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from natrelay.aspia.connection import make_wheel
from natrelay.aspia.proto import router_relay_pb2
from natrelay.aspia.relay.controller import RouterController, RouterLinkConfig
from natrelay.aspia.relay.keypool import KeyPool
from tests.unit.aspia.helpers import SERVER_PUBLIC
from tests.unit.aspia.relay.standin import RelayLinkStandIn, StandInRouter

DELAY = 0.3


async def _until(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


async def _no_key_pool(link: RelayLinkStandIn, seconds: float) -> None:
    await asyncio.sleep(seconds)
    assert all(not m.HasField("key_pool") for m in _drain(link))


def _drain(link: RelayLinkStandIn) -> list[router_relay_pb2.RelayToRouter]:
    out = []
    while not link.messages.empty():
        out.append(link.messages.get_nowait())
    return out


def test_replacements_wait_for_company_until_the_router_runs_low() -> None:
    async def main() -> None:
        router = StandInRouter()
        await router.start()
        loop = asyncio.get_running_loop()
        wheel = make_wheel(loop)
        pool = KeyPool(10)
        config = RouterLinkConfig(router_host="127.0.0.1", router_port=router.port,
                                  router_public_key=SERVER_PUBLIC, peer_host="127.0.0.1", peer_port=4000,
                                  announce_delay=DELAY, announce_low_stock=5)
        controller = RouterController(config, pool, wheel)
        stop = asyncio.Event()
        task = asyncio.create_task(controller.run(stop))
        try:
            link = await router.next_link()
            assert len((await link.next_message("key_pool")).key_pool.key) == 10

            # Plenty on the router: two ended sessions' keys travel together, after the delay.
            paired = [link.take_key().key_id, link.take_key().key_id]
            await _until(lambda: pool.handed_out == 2)
            started = loop.time()
            for key_id in paired:
                assert pool.pair(key_id)
                controller.announce(pool.session_ended())
            await _no_key_pool(link, DELAY / 3)
            batch = await link.next_message("key_pool")
            assert loop.time() - started >= DELAY
            assert [k.key_id for k in batch.key_pool.key] == [10, 11]
            assert batch.key_pool.peer_port == 4000

            # The router hands out six of its ten keys and one pair's session ends: with four left
            # to hand out, below the low stock of five, the replacement goes at once.
            taken = [link.take_key().key_id for _ in range(6)]
            await _until(lambda: pool.handed_out == 6)
            assert pool.pair(taken[0])
            started = loop.time()
            controller.announce(pool.session_ended())
            alone = await link.next_message("key_pool")
            assert loop.time() - started < DELAY
            assert [k.key_id for k in alone.key_pool.key] == [12]
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)
            wheel.close()
            await router.stop()

    asyncio.run(asyncio.wait_for(main(), 30))
