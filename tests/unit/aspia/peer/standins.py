"""In-process stand-ins for the Aspia router and relay, written from the spec, for the peer tests.

They implement only what the peers exercise (host IDs, connection requests and offers, pairing on
key ID + secret, blind forwarding) so the peers can be tested over real sockets on 127.0.0.1
without the router and relay programs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from dataclasses import dataclass, field
from typing import Any

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelProtocol, make_wheel
from natrelay.aspia.crypto import X25519KeyPair, open_relay_secret
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import (
    ROUTER_FROM_CLIENT,
    ROUTER_FROM_HOST,
    PeerToRelayReader,
    first_present,
    make_envelope,
    parse,
    serialize,
)
from natrelay.aspia.proto import relay_peer_pb2, router_common_pb2, router_peer_pb2
from natrelay.engine.clock import WheelDriver
from tests.unit.aspia.helpers import SEED, SERVER_PRIVATE, SERVER_PUBLIC, cheap_random, lookup, make_user

ROUTER_KEY = SERVER_PUBLIC
HOST = "127.0.0.1"


class StandInRelay:
    """Pairs peers presenting the same key ID and secret, then copies bytes both ways."""

    def __init__(self) -> None:
        self.keys: dict[int, tuple[X25519KeyPair, bytes]] = {}
        self._next_id = 0
        self._pending: dict[tuple[int, bytes], tuple[asyncio.StreamReader, asyncio.StreamWriter]] = {}
        self.server: asyncio.Server | None = None
        self.port = 0
        self.paired = 0
        self.refuse = False
        self.writers: list[asyncio.StreamWriter] = []

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._on_peer, HOST, 0)
        self.port = self.server.sockets[0].getsockname()[1]

    def new_key(self) -> router_common_pb2.RelayKey:
        pair = X25519KeyPair.generate()
        iv = os.urandom(12)
        key_id = self._next_id
        self._next_id += 1
        self.keys[key_id] = (pair, iv)
        return router_common_pb2.RelayKey(key_id=key_id, type=1, encryption=1, public_key=pair.public_bytes,
                                          iv=iv)

    async def _on_peer(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writers.append(writer)
        try:
            feeder = PeerToRelayReader()
            message = None
            while message is None:
                message = feeder.feed(await reader.readexactly(feeder.wanted))
            pair, iv = self.keys[message.key_id]
            secret = open_relay_secret(pair, iv, message.public_key, message.data)
        except Exception:
            writer.close()
            return
        if self.refuse:
            writer.close()
            return
        other = self._pending.pop((message.key_id, secret), None)
        if other is None:
            self._pending[(message.key_id, secret)] = (reader, writer)
            return
        del self.keys[message.key_id]
        self.paired += 1
        await asyncio.gather(self._pump(other[0], writer), self._pump(reader, other[1]))

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()  # the relay has no half-close: one side's end closes the other (§7.4)

    def kill_sessions(self) -> None:
        for writer in self.writers:
            writer.transport.abort()

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        self.kill_sessions()


class _RouterSession(ChannelProtocol):
    def __init__(self, router: StandInRouter, timers: WheelDriver[Any]) -> None:
        def make(now: float) -> Channel:
            return Channel(ServerHandshake(router.config, now, router.random_bytes), now=now)

        super().__init__(make, timers)
        self.router = router
        self.host_ids: list[int] = []

    def on_established(self) -> None:
        self.router.sessions.append(self)

    def on_messages(self, messages: list[bytes]) -> None:
        for payload in messages:
            envelope = parse(router_peer_pb2.PeerToRouter, payload)
            assert self.channel.result is not None
            kind = self.channel.result.session_type
            order = ROUTER_FROM_HOST if kind == 4 else ROUTER_FROM_CLIENT
            found = first_present(envelope, order)
            assert found is not None
            self.router.handle(self, *found)

    def reply(self, field_name: str, body: Any) -> None:
        self.send(serialize(make_envelope(router_peer_pb2.RouterToPeer, field_name, body)))

    def on_closed(self, reason: str) -> None:
        if self in self.router.sessions:
            self.router.sessions.remove(self)


@dataclass
class StandInRouter:
    """HOST and CLIENT sessions of a router (§6.3, §6.4) with an in-memory host table."""

    relay: StandInRelay | None
    users: dict[str, bytes] = field(default_factory=lambda: {"alice": b"router-secret"})
    sessions: list[_RouterSession] = field(default_factory=list)
    host_keys: dict[bytes, int] = field(default_factory=dict)
    requests: list[int] = field(default_factory=list)
    server: asyncio.Server | None = None
    port: int = 0

    def __post_init__(self) -> None:
        self.random_bytes = cheap_random(11)  # short SRP secrets: same maths, a fraction of the time
        records = [make_user(name, pw, sessions=2) for name, pw in self.users.items()]
        self.config = ServerConfig(private_key=SERVER_PRIVATE, seed_key=SEED, anonymous_sessions=12,
                                   users=lookup(*records))

    async def start(self, port: int = 0) -> None:
        timers = make_wheel(asyncio.get_running_loop())
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(lambda: _RouterSession(self, timers), HOST, port)
        self.port = self.server.sockets[0].getsockname()[1]

    def handle(self, session: _RouterSession, name: str, body: Any) -> None:
        if name == "host_id_request":
            self._host_id(session, body)
        elif name == "connection_request":
            self._connect(session, body.host_id)

    def _host_id(self, session: _RouterSession, request: Any) -> None:
        response = router_peer_pb2.HostIdResponse()
        if request.type == router_peer_pb2.HostIdRequest.NEW_ID:
            key = os.urandom(512)
            self.host_keys[key] = len(self.host_keys) + 1
            response.key = key
        elif request.key not in self.host_keys:
            response.error_code = router_peer_pb2.HostIdResponse.NO_HOST_FOUND
            session.reply("host_id_response", response)
            return
        else:
            key = request.key
        response.host_id = self.host_keys[key]
        session.host_ids.append(response.host_id)
        session.reply("host_id_response", response)

    def _connect(self, client: _RouterSession, host_id: int) -> None:
        self.requests.append(host_id)
        Offer = router_peer_pb2.ConnectionOffer
        host = next((s for s in self.sessions if host_id in s.host_ids), None)
        if host is None:
            client.reply("connection_offer", Offer(peer_role=Offer.CLIENT, error_code=Offer.PEER_NOT_FOUND))
            return
        if self.relay is None:
            client.reply("connection_offer", Offer(peer_role=Offer.CLIENT, error_code=Offer.KEY_POOL_EMPTY))
            return
        secret = relay_peer_pb2.PeerToRelay.Secret(
            random_data=os.urandom(16), client_address=HOST, client_user_name="alice", host_address=HOST,
            host_id=host_id)
        credentials = router_common_pb2.RelayCredentials(
            host=HOST, port=self.relay.port, key=self.relay.new_key(), secret=secret.SerializeToString())
        host_offer = Offer(peer_role=Offer.HOST, relay=credentials)
        host_offer.host_data.host_id = host_id
        host.reply("connection_offer", host_offer)
        client.reply("connection_offer", Offer(peer_role=Offer.CLIENT, relay=credentials))

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()
        for session in list(self.sessions):
            session.abort("router stopping")
