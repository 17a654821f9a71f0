"""The router shell writes a connection offer to its peers before ``key_used`` to the relay."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, cast

from natrelay.aspia.router.connection import RouterConnection
from natrelay.aspia.router.db import RouterDatabase, StoredUser
from natrelay.aspia.router.server import RouterOptions, RouterServer
from natrelay.aspia.router.sessions import Actions
from natrelay.ops.aspia_config import RouterConfig


class _Conn:
    """Stands in for an established connection: records what the shell writes, in order."""

    def __init__(self, name: str, is_relay: bool, written: list[tuple[str, bytes]]) -> None:
        self.name = name
        self.is_relay = is_relay
        self.written = written

    def send(self, payload: bytes) -> None:
        self.written.append((self.name, payload))


def _writes(tmp_path: Path, actions: Actions, conns: dict[int, tuple[str, bool]]) -> list[tuple[str, bytes]]:
    path = tmp_path / "router.db3"
    RouterDatabase.create(path, [StoredUser("admin", "4096", b"s" * 64, b"v" * 512, 1)])
    written: list[tuple[str, bytes]] = []

    async def run() -> None:
        server = RouterServer(RouterOptions(config=RouterConfig(private_key=bytes(range(32))), database=path),
                              RouterDatabase.open(path))
        try:
            for session_id, (name, is_relay) in conns.items():
                server.connections[session_id] = cast(RouterConnection, _Conn(name, is_relay, written))
            server.apply(actions)
        finally:
            server.timers.close()

    asyncio.run(run())
    return written


def test_offers_go_to_the_peers_before_key_used_goes_to_the_relay(tmp_path: Path) -> None:
    # The order the core produces for a connection request: key_used, host offer, client offer.
    actions = Actions(send=[(1, b"key_used"), (2, b"host offer"), (3, b"client offer"), (4, b"gone")])
    conns: dict[int, Any] = {1: ("relay", True), 2: ("host", False), 3: ("client", False)}
    assert _writes(tmp_path, actions, conns) == [
        ("host", b"host offer"), ("client", b"client offer"), ("relay", b"key_used")]


def test_messages_to_one_kind_keep_their_order(tmp_path: Path) -> None:
    actions = Actions(send=[(1, b"r1"), (2, b"p1"), (3, b"r2"), (2, b"p2")])
    conns: dict[int, Any] = {1: ("relay a", True), 2: ("peer", False), 3: ("relay b", True)}
    assert _writes(tmp_path, actions, conns) == [
        ("peer", b"p1"), ("peer", b"p2"), ("relay a", b"r1"), ("relay b", b"r2")]
