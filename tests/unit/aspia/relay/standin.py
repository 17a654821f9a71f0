"""An in-test Aspia router for the relay's router link, built from the real channel and messages.

It accepts relays (anonymous, pinned to its X25519 key, session RELAY), records what they send
and lets a test send ``key_used`` and ``peer_connection_request``; plus helpers that play the two
peers of a relayed connection with raw sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelProtocol, make_wheel
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import build_peer_to_relay, make_envelope, parse, serialize
from natrelay.aspia.proto import relay_peer_pb2, router_common_pb2, router_relay_pb2
from natrelay.engine.clock import WheelDriver
from tests.unit.aspia.helpers import SERVER_PRIVATE

RELAY_SESSION = 8


class RelayLinkStandIn(ChannelProtocol):
    def __init__(self, router: StandInRouter, timers: WheelDriver[Any]) -> None:
        config = ServerConfig(private_key=SERVER_PRIVATE, anonymous_sessions=RELAY_SESSION)
        super().__init__(lambda now: Channel(ServerHandshake(config, now), now=now), timers)
        self.router = router
        self.messages: asyncio.Queue[router_relay_pb2.RelayToRouter] = asyncio.Queue()
        self.keys: dict[int, router_common_pb2.RelayKey] = {}
        self.peer_address: tuple[str, int] = ("", 0)

    def on_established(self) -> None:
        self.router.links.put_nowait(self)

    def on_messages(self, messages: list[bytes]) -> None:
        for payload in messages:
            message = parse(router_relay_pb2.RelayToRouter, payload)
            if message.HasField("key_pool"):
                pool = message.key_pool
                self.peer_address = (pool.peer_host, pool.peer_port)
                for key in pool.key:
                    self.keys[key.key_id] = key
            self.messages.put_nowait(message)

    async def next_message(self, field: str, timeout: float = 5.0) -> router_relay_pb2.RelayToRouter:
        """The next message with ``field`` present, skipping others."""
        async with asyncio.timeout(timeout):
            while True:
                message = await self.messages.get()
                if message.HasField(field):
                    return message

    def take_key(self) -> router_common_pb2.RelayKey:
        """Like the router: the last key (LIFO), announced as used at once."""
        key_id = max(self.keys)
        key = self.keys.pop(key_id)
        self.send(serialize(make_envelope(router_relay_pb2.RouterToRelay, "key_used",
                                          router_relay_pb2.RelayKeyUsed(key_id=key_id))))
        return key

    def disconnect_session(self, session_id: int) -> None:
        request = router_common_pb2.PeerConnectionRequest(
            relay_session_id=1, type=router_common_pb2.PEER_CONNECTION_REQUEST_DISCONNECT,
            peer_session_id=session_id)
        envelope = make_envelope(router_relay_pb2.RouterToRelay, "peer_connection_request", request)
        self.send(serialize(envelope))


class StandInRouter:
    def __init__(self) -> None:
        self.links: asyncio.Queue[RelayLinkStandIn] = asyncio.Queue()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, port: int = 0) -> int:
        loop = asyncio.get_running_loop()
        wheel = make_wheel(loop)
        self.server = await loop.create_server(lambda: RelayLinkStandIn(self, wheel), "127.0.0.1", port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    async def next_link(self, timeout: float = 5.0) -> RelayLinkStandIn:
        return await asyncio.wait_for(self.links.get(), timeout)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                self.server.close_clients()  # type: ignore[attr-defined]  # 3.13+
            self.server = None


def secret(host_id: int = 7, user: str = "alice") -> bytes:
    return relay_peer_pb2.PeerToRelay.Secret(random_data=b"\x01" * 16, client_address="127.0.0.1",
                                             client_user_name=user, host_address="127.0.0.1",
                                             host_id=host_id).SerializeToString()


def credentials(link: RelayLinkStandIn, key: router_common_pb2.RelayKey,
                secret_bytes: bytes) -> router_common_pb2.RelayCredentials:
    host, port = link.peer_address
    return router_common_pb2.RelayCredentials(host=host, port=port, key=key, secret=secret_bytes)


async def peer(creds: router_common_pb2.RelayCredentials, early: bytes = b""
               ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection(creds.host, creds.port)
    writer.write(build_peer_to_relay(creds) + early)
    await writer.drain()
    return reader, writer


async def pair(link: RelayLinkStandIn, early_host: bytes = b"", early_client: bytes = b""
               ) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter],
                          tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
    key = link.take_key()
    creds = credentials(link, key, secret())
    host = await peer(creds, early_host)
    client = await peer(creds, early_client)
    return host, client
