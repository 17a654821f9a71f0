"""The composed Aspia channel (framing + keep-alive + handshake + session) and its asyncio carrier."""

from __future__ import annotations

import asyncio
import contextlib
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelClosedError, ChannelProtocol, channel_on_socket, open_channel
from natrelay.aspia.errors import AspiaProtocolError, ErrorCode
from natrelay.aspia.framing import FrameDecoder, KeepAliveFrame, encode_keepalive
from natrelay.aspia.handshake import Identify
from natrelay.aspia.handshake_client import ClientConfig, ClientHandshake
from natrelay.aspia.handshake_server import ServerConfig, ServerHandshake
from natrelay.engine.endpoint import make_wheel
from tests.unit.aspia.helpers import SEED, SERVER_PRIVATE, SERVER_PUBLIC, cheap_random, lookup, make_user

RELAY = 8
ADMIN = make_user("admin", b"secret", sessions=3)
ROUTER = ServerConfig(private_key=SERVER_PRIVATE, seed_key=SEED, anonymous_sessions=12, users=lookup(ADMIN))
ANON = ClientConfig(session_type=RELAY, identify=Identify.ANONYMOUS, server_public_key=SERVER_PUBLIC)
SRP_ADMIN = ClientConfig(session_type=1, username="admin", password=b"secret",
                         server_public_key=SERVER_PUBLIC)
WRONG_KEY = ClientConfig(session_type=RELAY, identify=Identify.ANONYMOUS, server_public_key=bytes(range(32)))


def _server(now: float = 0.0, config: ServerConfig = ROUTER, **kw: object) -> Channel:
    return Channel(ServerHandshake(config, now, cheap_random(1)), now=now, **kw)  # type: ignore[arg-type]


def _client(config: ClientConfig = ANON, now: float = 0.0, **kw: object) -> Channel:
    return Channel(ClientHandshake(config, now, cheap_random(2)), now=now, **kw)  # type: ignore[arg-type]


def _shuttle(a: Channel, b: Channel, now: float = 1.0) -> tuple[list[bytes], list[bytes]]:
    """Move bytes both ways until quiet; return what each side received."""
    got_a: list[bytes] = []
    got_b: list[bytes] = []
    while True:
        out_a, out_b = b"".join(a.take_output()), b"".join(b.take_output())
        if not out_a and not out_b:
            return got_a, got_b
        if out_a:
            got_b += b.receive_data(out_a, now)
        if out_b:
            got_a += a.receive_data(out_b, now)


@pytest.mark.parametrize("config", [ANON, SRP_ADMIN], ids=["anonymous", "srp"])
def test_handshake_then_messages_both_ways(config: ClientConfig) -> None:
    server, client = _server(), _client(config)
    assert not server.established and not client.established
    _shuttle(server, client)
    assert server.established and client.established
    assert server.result is not None and server.result.session_type == config.session_type
    assert server.channel_ids and client.channel_ids  # both sides are 2.7.0
    client.send(b"hello router")
    server.send(b"hello relay")
    got_server, got_client = _shuttle(server, client)
    assert got_server == [b"hello router"] and got_client == [b"hello relay"]


def test_tagged_frames_carry_the_channel_header_outside_the_ciphertext() -> None:
    server, client = _server(), _client()
    _shuttle(server, client)
    client.send(b"x" * 10, channel_id=5)
    (frame,) = client.take_output()
    assert frame[0] == 2 + 16 + 10 and frame[1:3] == b"\x05\x00"


def test_other_channel_ids_are_authenticated_but_ignored() -> None:
    server, client = _server(), _client()
    _shuttle(server, client)
    client.send(b"side", channel_id=1)
    client.send(b"main")
    got, _ = _shuttle(server, client)
    assert got == [b"main"] and server.ignored_messages == 1
    client.send(b"side2", channel_id=1)
    tagged = server.receive_tagged(b"".join(client.take_output()), 2.0)
    assert tagged == [(1, b"side2")]


def test_handshake_tail_and_first_message_in_one_read() -> None:
    server, client = _server(), _client()
    # Deliver client bytes one at a time, and hold the client's last handshake frame together
    # with its first application frame: the server must switch state between the two.
    hello = b"".join(client.take_output())
    for i in range(len(hello)):
        server.receive_data(hello[i : i + 1], 1.0)
    client.receive_data(b"".join(server.take_output()), 1.0)
    assert client.established and not server.established
    client.send(b"first")
    assert server.receive_data(b"".join(client.take_output()), 1.0) == [b"first"]
    assert server.established


def test_pings_are_answered_during_the_handshake() -> None:
    server = _server(keepalive=False)
    ping = encode_keepalive(True, b"\x00\x00\x00\x07")
    assert server.receive_data(ping, 1.0) == []
    assert server.take_output() == [encode_keepalive(False, b"\x00\x00\x00\x07")]


def test_keepalive_ping_pong_and_timeout_with_fake_time() -> None:
    server, client = _server(keepalive=False), _client(keepalive_interval=15, keepalive_timeout=5)
    _shuttle(server, client)
    assert client.next_deadline() == 15.0
    client.handle_timer(14.9)
    assert client.take_output() == []
    client.handle_timer(15.0)
    (ping,) = client.take_output()
    assert FrameDecoder().feed(ping) == [KeepAliveFrame(True, bytes(4))]
    assert client.next_deadline() == 20.0
    assert server.receive_data(ping, 15.5) == []
    client.receive_data(b"".join(server.take_output()), 15.5)
    assert client.next_deadline() == 30.5  # next ping one interval after the pong
    client.handle_timer(30.5)
    client.take_output()  # second ping, never answered
    with pytest.raises(AspiaProtocolError) as err:
        client.handle_timer(35.5)
    assert err.value.code is ErrorCode.TIMEOUT
    with pytest.raises(AspiaProtocolError):
        client.send(b"late")


def test_unsolicited_pong_fails_the_channel() -> None:
    server = _server()
    with pytest.raises(AspiaProtocolError):
        server.receive_data(encode_keepalive(False, bytes(4)), 1.0)
    assert server.error is not None
    with pytest.raises(AspiaProtocolError):
        server.receive_data(b"\x01x", 1.0)


def test_authentication_timeout_with_fake_time() -> None:
    config = ServerConfig(private_key=SERVER_PRIVATE, anonymous_sessions=8, timeout=60.0)
    server = _server(config=config, keepalive=False)
    assert server.next_deadline() == 60.0
    server.handle_timer(59.0)
    with pytest.raises(AspiaProtocolError) as err:
        server.handle_timer(60.0)
    assert err.value.code is ErrorCode.TIMEOUT


def test_established_channel_without_keepalive_has_a_finite_deadline() -> None:
    server, client = _server(keepalive=False), _client(keepalive=False)
    _shuttle(server, client)
    assert 1.0 < server.next_deadline() < 10_000.0
    server.enable_keepalive(100.0)
    assert server.next_deadline() == 160.0


def test_wrong_server_key_is_access_denied_on_the_client() -> None:
    server, client = _server(), _client(WRONG_KEY)
    with pytest.raises(AspiaProtocolError) as err:
        _shuttle(server, client)
    assert err.value.code is ErrorCode.ACCESS_DENIED


def test_short_and_forged_ciphertext_fail_as_access_denied() -> None:
    server, client = _server(), _client()
    _shuttle(server, client)
    with pytest.raises(AspiaProtocolError) as err:
        server.receive_data(b"\x05\x00\x00abc", 2.0)  # §12 bug 7: 3 bytes of "ciphertext"
    assert err.value.code is ErrorCode.ACCESS_DENIED


def test_oversized_frame_is_refused_before_buffering() -> None:
    server = _server(max_frame=1000)
    with pytest.raises(AspiaProtocolError):
        server.receive_data(b"\xe9\x07", 1.0)  # 1001


def test_send_before_authentication_and_empty_messages_are_refused() -> None:
    client = _client()
    with pytest.raises(RuntimeError):
        client.send(b"early")
    server = _server()
    _shuttle(server, client)
    with pytest.raises(ValueError):
        client.send(b"")


# ----------------------------------------------------------------- asyncio carrier
class _Echo(ChannelProtocol):
    def on_messages(self, messages: list[bytes]) -> None:
        self.send_many([b"echo " + m for m in messages])


class _Collect(ChannelProtocol):
    def __init__(self, make: object, timers: object) -> None:
        super().__init__(make, timers)  # type: ignore[arg-type]
        self.got: asyncio.Queue[bytes] = asyncio.Queue()

    def on_messages(self, messages: list[bytes]) -> None:
        for m in messages:
            self.got.put_nowait(m)


async def _serve() -> tuple[asyncio.Server, int]:
    loop = asyncio.get_running_loop()
    wheel = make_wheel(loop)
    server = await loop.create_server(lambda: _Echo(lambda now: _server(now), wheel), "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def test_open_channel_authenticates_and_carries_messages() -> None:
    async def main() -> None:
        server, port = await _serve()
        wheel = make_wheel(asyncio.get_running_loop())
        proto = await open_channel("127.0.0.1", port, lambda: _Collect(lambda now: _client(now=now), wheel),
                                   timeout=10)
        assert proto.channel.established and proto.ready.done()
        proto.send(b"ping")
        assert await asyncio.wait_for(proto.got.get(), 5) == b"echo ping"
        proto.close("done")
        assert await asyncio.wait_for(proto.closed, 5) == "done"
        server.close()

    asyncio.run(main())


def test_open_channel_with_wrong_key_reports_the_protocol_error() -> None:
    async def main() -> None:
        server, port = await _serve()
        wheel = make_wheel(asyncio.get_running_loop())
        with pytest.raises(ChannelClosedError) as err:
            await open_channel("127.0.0.1", port,
                               lambda: _Collect(lambda now: _client(WRONG_KEY, now), wheel), timeout=10)
        assert err.value.error is not None and err.value.error.code is ErrorCode.ACCESS_DENIED
        server.close()

    asyncio.run(main())


def test_channel_on_socket_feeds_initial_bytes_first() -> None:
    """A peer hands over a socket whose first bytes it has already read (e.g. after PeerToRelay)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        wheel = make_wheel(loop)
        a, b = socket.socketpair()
        # Side b is the server; its first bytes (the client's ClientHello) were "already read".
        client = _client(now=loop.time())
        hello = b"".join(client.take_output())
        server_proto = await channel_on_socket(b, lambda: _Echo(lambda now: _server(now), wheel), hello)
        # Continue the client by hand over side a.
        a.setblocking(False)
        client_proto = await channel_on_socket(a, lambda: _Collect(lambda now: client, wheel))
        await client_proto.wait_established(5)
        await server_proto.wait_established(5)
        client_proto.send(b"over the socket")
        assert await asyncio.wait_for(client_proto.got.get(), 5) == b"echo over the socket"
        client_proto.close("done")
        await asyncio.wait_for(server_proto.closed, 5)

    asyncio.run(main())


# ----------------------------------------------------------------- properties

@settings(max_examples=40, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=400), max_size=30),
       messages=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=5))
def test_any_chunking_gives_the_same_messages(cuts: list[int], messages: list[bytes]) -> None:
    server, client = _server(), _client()
    hello = b"".join(client.take_output())
    server.receive_data(hello, 1.0)
    client.receive_data(b"".join(server.take_output()), 1.0)
    for m in messages:
        client.send(m)
    stream = b"".join(client.take_output())
    got: list[bytes] = []
    pos = 0
    for cut in cuts:
        got += server.receive_data(stream[pos : pos + cut], 1.0)
        pos += cut
    got += server.receive_data(stream[pos:], 1.0)
    assert got == messages


@settings(max_examples=150, deadline=None)
@given(data=st.binary(max_size=200), established=st.booleans())
def test_garbage_only_ever_raises_the_protocol_error(data: bytes, established: bool) -> None:
    server, client = _server(), _client()
    if established:
        _shuttle(server, client)
    with contextlib.suppress(AspiaProtocolError):
        server.receive_data(data, 1.0)
