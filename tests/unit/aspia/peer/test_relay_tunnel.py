"""The relay connection of a peer, against a hand-driven far end on a socket pair.

The far end reads the ``PeerToRelay`` prefix exactly as a relay would and then plays the host's
channel by hand, so the tests can send what an honest host never would.
"""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelClosedError, make_wheel
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.aspia.messages import PeerToRelayReader, build_peer_to_relay
from natrelay.aspia.peer.relay_link import RelayTunnel, describe_client_failure
from natrelay.aspia.peer.users import PORT_FORWARD_SESSION, Credentials, HostUsers
from natrelay.aspia.proto import router_common_pb2
from natrelay.engine.tunnel import END_MESSAGE
from tests.unit.aspia.helpers import cheap_random

pytestmark = pytest.mark.timeout(30)
FAST = cheap_random(7)
USERS = HostUsers([Credentials("bob", b"pw")])


def credentials() -> router_common_pb2.RelayCredentials:
    key = router_common_pb2.RelayKey(key_id=0, type=1, encryption=1, public_key=bytes(range(1, 33)),
                                     iv=bytes(12))
    return router_common_pb2.RelayCredentials(host="127.0.0.1", port=1, key=key, secret=b"s")


class FarEnd:
    """The other side of the relay: checks the prefix, then a host channel driven by hand."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        self.prefix = PeerToRelayReader()
        self.channel = Channel(ServerHandshake(ServerConfig(users=USERS.lookup), 0.0, FAST), now=0.0,
                               keepalive=False)
        self.messages: list[bytes] = []

    async def step(self) -> bool:
        data = await self.loop.sock_recv(self.sock, 65536)
        if not data:
            return False
        if self.prefix.message is None:
            self.prefix.feed(data)
            data = self.prefix.leftover
            self.prefix.leftover = b""
        if data:
            self.messages += self.channel.receive_data(data, 1.0)
        await self.flush()
        return True

    async def flush(self) -> None:
        for chunk in self.channel.take_output():
            await self.loop.sock_sendall(self.sock, chunk)


async def connected(password: bytes) -> tuple[RelayTunnel, FarEnd]:
    loop = asyncio.get_running_loop()
    ours, theirs = socket.socketpair()
    theirs.setblocking(False)
    config = ClientConfig(session_type=PORT_FORWARD_SESSION, username="bob", password=password)
    prefix = build_peer_to_relay(credentials())
    _, proto = await loop.create_connection(
        lambda: RelayTunnel(prefix, lambda now: ClientHandshake(config, now, FAST), make_wheel(loop),
                            server=False), sock=ours)
    far = FarEnd(theirs)
    return proto, far


def test_prefix_then_handshake_then_stream_with_end() -> None:
    async def scenario() -> None:
        proto, far = await connected(b"pw")
        while not proto.ready.done():
            assert await far.step()
        assert far.prefix.message is not None and far.prefix.message.key_id == 0
        reader, writer = proto.streams()
        writer.write(b"hello")
        writer.write_eof()
        while len(far.messages) < 2:
            assert await far.step()
        assert far.messages == [b"\x00hello", END_MESSAGE]
        far.channel.send(b"\x00world")
        far.channel.send(END_MESSAGE)
        await far.flush()
        assert await reader.read() == b"world"
        await asyncio.wait_for(proto.closed, 5)  # both ends ended: the connection closes itself
        assert proto.close_reason == "stream finished"

    asyncio.run(scenario())


@pytest.mark.parametrize(("messages", "reason", "ended"), [
    ([END_MESSAGE, b"\x00late"], "after end of stream", True),
    ([b"\x07?"], "stream layer error", False),
])
def test_stream_violations_close_the_connection(messages: list[bytes], reason: str, ended: bool) -> None:
    async def scenario() -> None:
        proto, far = await connected(b"pw")
        while not proto.ready.done():
            assert await far.step()
        reader, _writer = proto.streams()
        for message in messages:
            far.channel.send(message)
        await far.flush()
        assert reason in await asyncio.wait_for(proto.closed, 5)
        if ended:  # the host's stream had ended properly before the violation
            assert await reader.read() == b""
        else:
            with pytest.raises(ConnectionResetError):
                await reader.read()

    asyncio.run(scenario())


def test_wrong_password_and_silent_close_are_told_apart() -> None:
    async def scenario() -> None:
        proto, far = await connected(b"wrong")
        while not proto.ready.done():
            await far.step()
        exc = proto.ready.exception()
        assert isinstance(exc, ChannelClosedError)
        assert "wrong host user name or password" in describe_client_failure(proto, exc, "relay", "bob")

        proto, far = await connected(b"pw")
        (length,) = struct.unpack(">I", await asyncio.get_running_loop().sock_recv(far.sock, 4))
        assert length > 0
        far.sock.close()  # what a relay does when it cannot pair us
        with pytest.raises(ChannelClosedError) as info:
            await asyncio.wait_for(proto.ready, 5)
        message = describe_client_failure(proto, info.value, "relay", "bob")
        assert "relay at relay refused the connection" in message

    asyncio.run(scenario())
