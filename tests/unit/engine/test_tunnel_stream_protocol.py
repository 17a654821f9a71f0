"""A tunnel writer's drain() after the tunnel is lost names the reason, never a bare 'Connection lost'."""

from __future__ import annotations

import asyncio

import pytest

from natrelay.engine.tunnel import TunnelStreamProtocol


def test_drain_after_loss_raises_the_recorded_reason() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader(loop=loop)
        proto = TunnelStreamProtocol(reader, loop=loop)
        proto.connection_lost(ConnectionResetError("relayed connection closed: the relay went away"))
        with pytest.raises(ConnectionResetError, match="the relay went away"):
            await proto._drain_helper()

    asyncio.run(scenario())


def test_drain_after_a_clean_end_keeps_asyncios_behaviour() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        proto = TunnelStreamProtocol(asyncio.StreamReader(loop=loop), loop=loop)
        proto.connection_lost(None)
        with pytest.raises(ConnectionResetError, match="Connection lost"):
            await proto._drain_helper()

    asyncio.run(scenario())
