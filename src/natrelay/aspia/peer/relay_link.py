"""The peer side of a relay connection (spec §8.3), carrying one byte stream once authenticated.

A peer dials the relay named in its offer, writes ``PeerToRelay`` behind a 4-byte big-endian
length, and from then on the same socket is an ordinary Aspia channel to the *other peer*: the
relay pairs the two sockets and copies bytes blindly, so the host-client SRP handshake and
everything after it are end to end and the relay sees only ciphertext.

Inside that channel natrelay carries a TCP-like byte stream with half-close, in the engine's
stream layer (:mod:`natrelay.engine.tunnel`), exposed as a ``StreamReader``/``StreamWriter``
pair.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

from natrelay.aspia.channel import Channel
from natrelay.aspia.connection import ChannelClosedError, ChannelProtocol
from natrelay.aspia.errors import ErrorCode
from natrelay.aspia.framing import KeepAlive
from natrelay.aspia.handshake_client import ClientHandshake
from natrelay.aspia.handshake_server import ServerHandshake
from natrelay.aspia.messages import build_peer_to_relay
from natrelay.aspia.proto import router_common_pb2
from natrelay.engine.clock import WheelDriver
from natrelay.engine.tunnel import StreamEnd, TunnelStreamProtocol

Streams = tuple[asyncio.StreamReader, asyncio.StreamWriter]

#: Reader buffer per stream before the relay connection stops being read.
STREAM_LIMIT = 1024 * 1024

HandshakeFactory = Callable[[float], ServerHandshake | ClientHandshake]

PEER_KEEPALIVE_INTERVAL = 20.0
"""Seconds between our pings on the router and relay connections. The C++ peers ping every 60 s,
longer than many NATs keep an idle TCP mapping (30 s in the NAT test bed, a few minutes on common
home routers): a ping every 20 s keeps the mapping of every hop alive, and stays inside the
15..300 s the C++ components accept for their own setting (they answer pings at any rate)."""
PEER_KEEPALIVE_TIMEOUT = 15.0
"""Seconds we wait for a pong. When a NAT forgets a mapping the connection turns into a black
hole; this bounds how long a host or client keeps using it (interval + timeout at most)."""


@dataclass(frozen=True, slots=True)
class KeepAliveTiming:
    """How often a peer pings on its connections, and how long it waits for each pong (§2.4)."""

    interval: float = PEER_KEEPALIVE_INTERVAL
    timeout: float = PEER_KEEPALIVE_TIMEOUT

    def __post_init__(self) -> None:
        KeepAlive(self.interval, self.timeout)  # raises ValueError outside what the C++ side accepts

    def channel(self, handshake: ServerHandshake | ClientHandshake, now: float, *,
                keepalive: bool = True) -> Channel:
        return Channel(handshake, now=now, keepalive=keepalive, keepalive_interval=self.interval,
                       keepalive_timeout=self.timeout)


DEFAULT_KEEPALIVE = KeepAliveTiming()


class PeerError(ConnectionError):
    """A peer operation failed; the message says why in the user's terms, on one line."""


class RelayTunnel(ChannelProtocol):
    """One relay connection: ``PeerToRelay``, then a channel, then a byte stream in it.

    As the host (server handshake) it turns its own keep-alive on only after the client has
    authenticated, as the C++ host does (§2.4); the client's channel pings from the start.
    """

    def __init__(self, prefix: bytes, make_handshake: HandshakeFactory, timers: WheelDriver[Any], *,
                 server: bool, keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE, where: str = "") -> None:
        def make_channel(now: float) -> Channel:
            return keepalive.channel(make_handshake(now), now, keepalive=not server)

        super().__init__(make_channel, timers)
        self._prefix = prefix
        self._server = server
        self.where = f" at {where}" if where else ""
        self.reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=self.loop)
        self.app = TunnelStreamProtocol(self.reader, loop=self.loop)
        self.stream = StreamEnd(self.app)
        self.bytes_from_peer = 0

    # ------------------------------------------------------------ connection
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # PeerToRelay goes first, then whatever the channel queued (a client's ClientHello):
        # the relay never reads past the prefix before pairing (§7.3), so both may go at once.
        cast(asyncio.Transport, transport).write(self._prefix)
        super().connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.bytes_from_peer += len(data)
        super().data_received(data)

    def on_established(self) -> None:
        if self._server:
            self.channel.enable_keepalive(self.loop.time())
        assert self.transport is not None
        extra = {"peername": self.transport.get_extra_info("peername"),
                 "sockname": self.transport.get_extra_info("sockname")}
        self.stream.open(self, extra)

    # ---------------------------------------------------------- stream layer
    def send_app(self, messages: list[bytes]) -> None:
        """Send stream-layer messages through the encrypted channel."""
        if not self.closing:
            self.send_many(messages)

    def on_messages(self, messages: list[bytes]) -> None:
        for message in messages:
            problem = self.stream.deliver(message)
            if problem is not None:
                self.abort(problem)
                return
        self.maybe_finish()

    def maybe_finish(self) -> None:
        """Both sides have ended their streams: close once our output is written."""
        if self.stream.finished:
            self.close("stream finished")

    def on_pause_writing(self) -> None:
        self.stream.pause_writing()

    def on_resume_writing(self) -> None:
        self.stream.resume_writing()

    def streams(self) -> Streams:
        """The reader/writer pair of the byte stream (only once authenticated)."""
        tunnel = self.stream.transport
        if tunnel is None:
            raise RuntimeError("the stream exists only once the channel is authenticated")
        return self.reader, asyncio.StreamWriter(tunnel, self.app, self.reader, self.loop)

    def on_closed(self, reason: str) -> None:
        if reason == "peer closed the connection" or reason.startswith("connection lost") \
                or "keep-alive" in reason:
            # The relay's socket is all we see: a relay that died and one that closed our side
            # because the other peer died look alike, so the message names both.
            reason = f"the relay{self.where} went away, or the other peer did ({reason})"
        self.stream.connection_lost(reason)


def describe_client_failure(proto: RelayTunnel, exc: ChannelClosedError, where: str, user: str) -> str:
    """What a failed client-side host handshake most likely means, in one line."""
    error = exc.error
    if error is not None and error.code is ErrorCode.ACCESS_DENIED:
        return (f"the host refused the login: wrong host user name or password (host user {user!r}; "
                f"set --host-user/--host-password-file if they differ from the router account)")
    if error is not None and error.code is ErrorCode.SESSION_DENIED:
        return f"the host does not allow host user {user!r} to open a port-forwarding session"
    if error is not None and error.code is ErrorCode.TIMEOUT:
        return f"the host did not finish authentication in time ({where})"
    if error is not None:
        return f"the host broke the protocol: {error}"
    if proto.bytes_from_peer == 0:
        return (f"the relay at {where} refused the connection: it closed it without pairing us with the "
                f"host (the offer expired, or the host never arrived) [{exc.reason}]")
    return f"the host closed the connection during authentication ({exc.reason})"


def relay_address(credentials: router_common_pb2.RelayCredentials) -> str:
    host = credentials.host
    return f"[{host}]:{credentials.port}" if ":" in host else f"{host}:{credentials.port}"


async def open_relay_tunnel(credentials: router_common_pb2.RelayCredentials, make_handshake: HandshakeFactory,
                            timers: WheelDriver[Any], *, server: bool, timeout: float,
                            keepalive: KeepAliveTiming = DEFAULT_KEEPALIVE) -> RelayTunnel:
    """Connect to the relay and start the channel; returns before authentication.

    Raises :class:`PeerError` if the relay cannot be reached. The caller awaits
    ``wait_established`` on the result, then takes :meth:`RelayTunnel.streams`.
    """
    prefix = build_peer_to_relay(credentials)
    loop = asyncio.get_running_loop()
    where = relay_address(credentials)
    try:
        _, proto = await asyncio.wait_for(loop.create_connection(
            lambda: RelayTunnel(prefix, make_handshake, timers, server=server, keepalive=keepalive,
                                where=where),
            credentials.host, credentials.port), timeout)
    except (OSError, TimeoutError) as exc:
        raise PeerError(f"cannot reach the relay at {where}: {exc or 'timed out'}") from exc
    return proto
